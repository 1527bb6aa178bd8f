"""Real handwritten digits shared by the CIFAR-scale DDPM++ and the Stable Diffusion-scale digits model:
scikit-learn's bundled scans, one image convention, one three-way split (:mod:`handwritten.data`), and
the independent judges that read generated digits without ever guiding anything
(:mod:`handwritten.judges`).

It sits beside the library in ``shared/`` because two scales use it and the scales never import
each other; it knows nothing of either scale's models.
"""
