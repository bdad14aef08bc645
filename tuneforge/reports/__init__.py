"""Reports read run directories (never live objects): plots, tables, comparisons."""
