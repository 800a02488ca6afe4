"""Training both model kinds on users' data: tiles cut from slides, image/mask and IDC patch
folders, the training loop, and evaluation on held-out images."""
