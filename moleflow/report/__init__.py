"""The HTML report of a run (`moleflow report RUN_DIR`, and the end of every `moleflow train`): an index with
the run's settings, the per-class table, the continual matrices and the plots; per class a dataset page and an
evaluation page of image tiles at each image's own resolution.

Modules: source.py (where the anomaly maps come from), tiles.py (the tiles' images, masks and order; their
heatmaps come from evaluation/visualize.py), plots.py (matplotlib), html.py + pages.py (the pages), writer.py
(`write_report`), compare_page.py (`moleflow compare --report`).
"""
