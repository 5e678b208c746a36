"""Export to engines: textured meshes (GLB, OBJ) and Gaussian splats (PLY, .splat, .spz, KHR GLB).

The pipeline is split by stage, one module each: ``extract`` (representation -> raw mesh),
``cleanup`` (connected components), ``decimate``, ``bake`` (UV unwrap, UV-space raster, dilation),
writers ``gltf`` / ``obj`` / ``splats``, ``mesh`` (the registered exporter that runs them), and ``viewer``
(``viewer.html``: the mesh and splats in a browser, its page in ``viewer_web/``).
Nothing here is imported by ``import threedgen``.
"""
