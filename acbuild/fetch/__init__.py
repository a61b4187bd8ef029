"""Verified fetch: images by name, URL or file into the image store (acbuild.fetch.fetcher)."""

# --pull: missing (ask discovery only when the store has no match), always, never.
PULL_POLICIES = ("missing", "always", "never")
