"""Gathering: one module per source (Wikipedia API and dumps, Britannica, YouTube, Python's docs), plus what the query-driven scrapers share."""
