"""The FFHQ-X benchmark's parts; ``benchmarks/ffhqx.py`` is its command line.

* :mod:`.protocol` — what a run is: settings, sharding, seeds, the (task, level) × mode table;
* :mod:`.data` — the ground truth: a folder of faces, or the smoke run's synthetic images;
* :mod:`.results` — the resumable JSON-lines store and the run's recorded settings;
* :mod:`.engine` — restoring each image through :mod:`redegrade.session` and scoring each row;
* :mod:`.report` — merging every rank's rows into the table, its CSV, pFID and the grids.
"""
