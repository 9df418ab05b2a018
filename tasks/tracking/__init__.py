"""MLflow: the tracking store, logging a run, registering its INT8 model, and registry models as inputs."""
