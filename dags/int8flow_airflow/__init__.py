"""What the int8flow DAGs share: the trigger form made from the run-configuration schema, where each
DAG run writes, and how a task failure is classified (bad input fails at once, the rest retries).

It lives beside the DAG files (Airflow puts the DAG folder on ``sys.path``) and is listed in
``.airflowignore``, so the DAG processor does not parse it as a DAG file.
"""
