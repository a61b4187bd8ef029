"""The step cache: `stepcache` (entries as snapshots, locking, prune), `keys`
(the content key of every step), `statcache` (size/mtime/inode/ctime records that
spare re-hashing unchanged context files). May import execute/ and deps/ (what a
key covers); not interactive/."""
