"""Local infrastructure without Docker: Apache Kafka (KRaft) from Maven Central and a
MongoDB-protocol server (a real ``mongod`` when on PATH, else FerretDB on PostgreSQL)."""
