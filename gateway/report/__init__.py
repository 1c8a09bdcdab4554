"""Reports and exports for clinicians and researchers, and the long-term sample archive.

- `archive`: the downsampled archive (per subject, property and 15 minutes) written before
  raw samples are pruned, and the pruning itself (an SQLite adapter on the gateway's file);
- `history`: reads a subject's samples, archive rows and gap records for a time range;
- `analysis`: turns that history into what the report plots (sans-I/O);
- `svg`, `page`: the plots and the one self-contained HTML file (sans-I/O);
- `export`: CSV and Parquet files of the same history;
- `cli`: `dermtwin report` and `dermtwin export`.
"""
