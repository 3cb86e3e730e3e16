"""Training jobs of a framework service: request data (`data`, `csv_files`, `datasets`), the
run itself through the backend (`trainer`, `jobs`), its TensorBoard events (`tensorboard`),
seed models (`seed`), job metrics (`metrics`) and the TrainingService servicer (`servicer`).

May import: everything the engine may, and `serving.engine` (a finished run becomes a version
the manager serves). Never the app layer or a framework.
"""
