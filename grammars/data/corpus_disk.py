"""A prepared corpus on disk: written whole or not at all, read back whole or refused in one line.

The manifest lists every other file of the corpus with its size and sha256, so a truncated,
edited or deleted file is found when the corpus is loaded, with the file named, instead of
surfacing later as an Arrow traceback or, worse, as silently different data. Corpora written
before the list existed are still read, with Arrow's own full validation instead.

Empty splits (a ratio of 0, a split no sentence fell into) are stored (`datasets` writes no
Arrow file for them) and load as empty datasets; a command that names one is refused by
`Corpus.split` with the sizes of every split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gfnem_cli.engine import prepared
from gfnem_cli.engine.errors import GfnemError
from grammars.data.vocabulary import Vocabulary

MANIFEST_FORMAT = 1
DAMAGED = "the corpus is damaged: prepare it again with `gfnem prepare`"


def _features():
    import datasets

    ints = datasets.Sequence(datasets.Value("int32"))
    strings = datasets.Sequence(datasets.Value("string"))
    return datasets.Features({
        "words": strings, "tokens": strings, "ids": ints,
        "gold_spans": datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=2)),
        "tree": datasets.Value("string"), "source": datasets.Value("string"),
    })


def to_dataset_dict(corpus):       # a `corpus.PreparedCorpus`
    import datasets

    features = _features()
    parts = {}
    for name, sentences in corpus.splits.items():
        parts[name] = datasets.Dataset.from_dict({
            "words": [s.words for s in sentences], "tokens": corpus.tokens[name],
            "ids": corpus.ids[name],
            "gold_spans": [[list(span) for span in s.gold_spans] for s in sentences],
            "tree": [s.tree for s in sentences], "source": [s.source for s in sentences],
        }, features=features)
    return datasets.DatasetDict(parts)


def check_output_dir(out: Path) -> None:
    """Refuse, before any input is read, an --out that is not empty, not a corpus, or not
    writable (`engine.prepared`)."""
    prepared.check_output_dir(out, "corpus")


def save_corpus(corpus, out: Path, extra_files: dict[str, object] | None = None
                ) -> Path:
    """Written whole into a temporary sibling and swapped in (`engine.prepared`)."""
    import datasets

    def fill(tmp: Path) -> dict:
        datasets.disable_progress_bars()
        to_dataset_dict(corpus).save_to_disk(str(tmp))
        corpus.vocab.save(tmp / "vocab.json")
        for name, payload in (extra_files or {}).items():
            prepared.write_json(tmp / name, payload)
        return corpus.manifest

    return prepared.write_prepared(out, fill, "corpus")


@dataclass
class Corpus:
    """A prepared corpus read back from disk: `data` holds every split, empty ones included;
    `sizes` their sentence counts."""

    path: Path
    data: object            # datasets.DatasetDict
    vocab: Vocabulary
    manifest: dict
    sizes: dict[str, int]

    def describe_splits(self) -> str:
        return ", ".join(f"{name} {count:,}" for name, count in self.sizes.items())

    def split(self, name: str, allow_empty: bool = False):
        """The named split, or a one-line error listing every split and its size; every
        command that names a split to read sentences from calls this first."""
        if name not in self.sizes:
            raise GfnemError(f"no split {name!r} (splits: {self.describe_splits()})", self.path,
                             hint="name one of the non-empty splits")
        if self.sizes[name] == 0 and not allow_empty:
            raise GfnemError(f"split {name!r} is empty (splits: {self.describe_splits()})",
                             self.path, hint="name one of the non-empty splits, or prepare "
                                             "the corpus again with other --ratios")
        return self.data[name]

    def column(self, split: str, name: str) -> list:
        """A whole column as Python lists, straight from Arrow (no per-row dict building).
        The split must exist; an empty one gives [] (callers that need sentences check with
        `split` first, or say which of their settings named it)."""
        return self.split(split, allow_empty=True).data.column(name).to_pylist()


def load_corpus(path: Path) -> Corpus:
    """Read a prepared corpus, checking every file against the manifest first; any damage is
    a one-line error naming the file and saying to prepare the corpus again."""
    import datasets

    path = Path(path)
    manifest_path = prepared.manifest_of(path, "corpus", "`gfnem prepare`")
    manifest = _read_manifest(manifest_path)
    files = manifest.get("files")
    if files is not None:
        prepared.check_files(path, files, "corpus", DAMAGED)
    for needed in ("dataset_dict.json", "vocab.json"):
        if not (path / needed).is_file():
            raise GfnemError("missing file of a prepared corpus", path / needed, hint=DAMAGED)
    vocab = Vocabulary.load(path / "vocab.json")
    sizes = {name: stats["sentences"] for name, stats in manifest["splits"].items()}
    listed = _read_json(path / "dataset_dict.json").get("splits")
    if not isinstance(listed, list) or set(map(str, listed)) != set(sizes):
        raise GfnemError(f"lists splits {listed!r} but the manifest has {sorted(sizes)}",
                         path / "dataset_dict.json", hint=DAMAGED)
    datasets.disable_progress_bars()
    loaded = {name: _load_split(path / name, count, len(vocab), files is None)
              for name, count in sizes.items()}
    return Corpus(path, datasets.DatasetDict(loaded), vocab, manifest, sizes)


def _read_json(path: Path):
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise GfnemError(f"cannot read: {exc.strerror or exc}", path) from None
    except ValueError as exc:
        raise GfnemError(f"unreadable JSON: {prepared.first_line(exc)}", path,
                         hint=DAMAGED) from None
    if not isinstance(data, dict):
        raise GfnemError("unreadable JSON: not an object", path, hint=DAMAGED)
    return data


def _read_manifest(path: Path) -> dict:
    manifest = _read_json(path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise GfnemError(f"manifest format {manifest.get('format')!r} is not "
                         f"{MANIFEST_FORMAT}", path, hint="prepare the corpus again")
    splits = manifest.get("splits")
    if (isinstance(splits, dict) and splits and isinstance(manifest.get("kind"), str)
            and all(isinstance(v, dict) and "sentences" not in v for v in splits.values())):
        raise GfnemError(f"a prepared {manifest['kind']!r} set, not a corpus (its splits "
                         "hold no sentences)", path.parent, hint="give a corpus written by "
                         "`gfnem prepare ptb|text|synthetic`, or an image run for image sets")
    good = (isinstance(splits, dict) and splits
            and all(isinstance(s, dict) and type(s.get("sentences")) is int
                    and s["sentences"] >= 0 for s in splits.values())
            and isinstance(manifest.get("fingerprint"), str)
            and isinstance(manifest.get("kind"), str)
            and isinstance(manifest.get("options", {}), dict))
    files = manifest.get("files")
    if files is not None:
        good = good and isinstance(files, dict) and all(
            isinstance(v, dict) and type(v.get("bytes")) is int
            and isinstance(v.get("sha256"), str) for v in files.values())
    if not good:
        raise GfnemError("damaged manifest: a required entry is missing or malformed", path,
                         hint=DAMAGED)
    return manifest


def _load_split(folder: Path, count: int, vocab_size: int, validate: bool):
    """One split, checked as every prepared set's (`prepared.load_split`) plus the token
    ids' range; an empty split may have no Arrow file at all."""
    import datasets
    import pyarrow.compute as pc

    if folder.is_dir() and count == 0 and not any(folder.glob("*.arrow")):
        return datasets.Dataset.from_dict({name: [] for name in _features()},
                                          features=_features())

    def ids_problem(table) -> str | None:
        ids = pc.list_flatten(table.column("ids"))
        low, high = pc.min(ids).as_py(), pc.max(ids).as_py()
        if low is not None and (low < 0 or high >= vocab_size):
            return f"token ids outside the vocabulary of {vocab_size:,}"
        return None

    return prepared.load_split(folder, _features(), count, "corpus", "sentences", DAMAGED,
                               ids_problem, validate)

