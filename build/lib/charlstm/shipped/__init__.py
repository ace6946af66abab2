"""The model shipped with charlstm: models/*.npz installs as the package data `charlstm.shipped`."""
