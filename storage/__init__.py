"""droptune storage: the StudySpec, the database, the queue and the Optuna storage over one URL."""
