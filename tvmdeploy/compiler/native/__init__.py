"""C sources compiled into artifacts (not imported): parallel_pool.c, tvmdeploy's thread pool."""
