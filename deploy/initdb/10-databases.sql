-- Run once by the postgres image on an empty volume: the MLflow and Prefect databases
-- (the Optuna database is POSTGRES_DB).
CREATE DATABASE sweepflow_mlflow;
CREATE DATABASE sweepflow_prefect;
