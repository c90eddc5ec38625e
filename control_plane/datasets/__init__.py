"""Dataset domain code that holds no database state: image probing, safe sources (folders and zip
archives), the import/export formats and the on-disk store. Services in
``control_plane.services.dataset*`` combine these with the database."""
