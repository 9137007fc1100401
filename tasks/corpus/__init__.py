"""Corpus steps: the document format, parquet conversion, cleaning filters, dedup, merge and tokenize."""
