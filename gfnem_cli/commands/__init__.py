"""One module per subcommand: option parsing and rendering only; modelling lives elsewhere.

    prepare.py     gfnem prepare ptb | text | synthetic | shapes | mnist
    train.py       gfnem train RECIPE --out RUN
    sample.py      gfnem sample RUN (trees, or a PNG of images)
    parse.py       gfnem parse RUN --input ... --out FILE
    evaluate.py    gfnem evaluate [RUN] --data DIR (F1, NLL; images: images.py)
    score.py       gfnem score RUN --input ... --out scores.jsonl : log p(x) per sentence
    summarize.py   gfnem summarize RUN... : mean ± sd over runs, one row per seed
    plot.py        gfnem plot RUN... --metric M --out curves.png : training curves
    images.py      the image family's side of prepare / sample / parse / evaluate
    grammar_report.py  what evaluate / parse / score print about a grammar run: F1 table,
                   NLL line, <unk> rate, notes; the gold lines written for EVALB
    checks.py      checks of command-line values the commands share
"""
