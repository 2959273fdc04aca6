"""What needs notebooks or plots: report tables, plots and publishing (papermill, nbconvert, matplotlib).

The measuring core (perfkit/*.py) never imports this package; this package reads what the core wrote.
    tables   the report notebooks' tables: metric card, provenance, study tables, comparison tables
    plots    the figures: ttft against input length, throughput against batch, ratio bars and heatmaps
    publish  runs notebooks/*.ipynb with papermill and publishes self-contained HTML with an index
"""
