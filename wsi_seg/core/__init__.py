"""What every part of wsi-seg shares: errors with one-line messages, atomic and capped file
handling, and the naming of a slide's outputs. Imports nothing else of wsi-seg."""
