"""Shared machinery: settings, polite HTTP and its limits, crawl ledgers, caching, progress, process spawning."""
