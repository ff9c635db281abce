"""The index database's revisions, oldest first (``0001_initial`` is the schema of the first
release, the one ``Base.metadata.create_all`` used to make)."""
