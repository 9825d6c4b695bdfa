"""A campaign on disk: its directories and lock (``layout``), ``summary.json`` (``summary``) and the report
(``report``, rendered through ``document``). Used by the flows and the CLI; it never imports them."""
