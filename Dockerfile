# The image every service of docker-compose.yaml runs: Airflow 3.3 + the MLS sync package + the mock MLS.
# Code is also bind-mounted read-only at the same paths, so edits to dags/plugins/include need no rebuild.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

ENV MLS_HOME=/opt/mls \
    PYTHONPATH=/opt/mls
USER root
RUN mkdir -p /opt/mls /opt/airflow/auth && chown airflow:0 /opt/mls /opt/airflow/auth
USER airflow
WORKDIR /opt/mls

# Dependencies first (a layer that survives code edits); apache-airflow is pinned in the file.
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY --chown=airflow:0 plugins ./plugins
COPY --chown=airflow:0 dags ./dags
COPY --chown=airflow:0 include ./include
COPY --chown=airflow:0 mock_mls ./mock_mls
RUN pip install --no-cache-dir --no-deps -e .
