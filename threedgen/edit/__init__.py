"""Localised editing of a 3D Gaussian scene (issue 19): the scene file reader, the edit box, the
frozen-background scene with a trainable object, and the per-view masks, depth images and anchor
view. Imports nothing heavy; each module is loaded when used."""
