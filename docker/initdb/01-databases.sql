-- One Postgres, two databases: Prefect's and MLflow's.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
