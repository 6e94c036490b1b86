"""moeclip_jax.data: dataset readers, TFDS builders, grain pipelines.

Modules (import what you need; importing the package is cheap):
  records        the Record type every reader produces
  readers        layout readers and their registry (READERS)
  images         decoding + conversion of images and masks
  checks         the bad-input policy
  tfds_builders  array_record TFDS datasets without TensorFlow
  transforms     per-method preprocessing presets, joint augmentation
  sources        grain data sources (raw records, padding)
  pipeline       grain train / eval loaders
  synthetic      procedural defects with masks
  class_names    class name -> prompt noun per method
  cli            `python -m moeclip_jax.data prepare|inspect`
"""
