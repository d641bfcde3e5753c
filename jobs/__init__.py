"""embcache jobs: typed, click-free functions (``embed_corpus``, ``train``, ``score``) and the CLI."""
