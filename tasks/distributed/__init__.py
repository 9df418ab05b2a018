"""Distribution: the Dask cluster, fanning shard jobs out, and what one worker does with one shard."""
