-- Indexes that FerretDB's own queries can use (installed by deploy/local/store.py at every start).
--
-- FerretDB v1.24 (PostgreSQL backend) stores a document as one jsonb column `_jsonb`, creates
-- every MongoDB index as a btree on expressions such as `(_jsonb -> 'code')`, and pushes an
-- equality filter `{code: "X"}` down as `(_jsonb -> 'code') @> '"X"'`. A btree cannot answer
-- `@>`, so every pushed-down filter, including `{_id: ...}`, is a sequential scan of the whole
-- collection: lookups slow down linearly as data grows. For the leading key of each btree index
-- FerretDB creates, this adds a GIN "twin" on the same expression, which answers `@>`.
-- Unique constraints stay on FerretDB's btrees; the twins only serve reads. No fast update:
-- GIN's pending list would be scanned linearly by every lookup until the next vacuum.

CREATE OR REPLACE FUNCTION pinwheel_gin_twins(index_oid oid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    table_oid oid;
    key_count integer;
    expression text;
    twin_name text;
    created integer := 0;
BEGIN
    SELECT i.indrelid, i.indnkeyatts INTO table_oid, key_count
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_class tc ON tc.oid = i.indrelid
    JOIN pg_namespace ns ON ns.oid = tc.relnamespace
    WHERE i.indexrelid = index_oid AND am.amname = 'btree'
      AND ns.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
      AND tc.relname NOT LIKE '\_ferretdb%'
      AND EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = i.indrelid AND a.attname = '_jsonb' AND NOT a.attisdropped);
    IF table_oid IS NULL THEN
        RETURN 0;
    END IF;
    -- the leading key only: the services' equality lookups name it (a twin per key would make
    -- every insert maintain GIN entries for sort and range fields that equality never uses)
    FOR k IN 1..least(key_count, 1) LOOP
        expression := pg_get_indexdef(index_oid, k, true);
        -- only FerretDB's field expressions: _jsonb -> 'f' and _jsonb #> '{a,b}'
        CONTINUE WHEN expression !~ '^\(?_jsonb (->|#>) ';
        twin_name := 'pw_gin_' || substr(md5(table_oid::text || ':' || expression), 1, 24);
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_class WHERE relname = twin_name
                              AND relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = table_oid));
        EXECUTE format('CREATE INDEX %I ON %s USING gin ((%s) jsonb_path_ops) WITH (fastupdate = off)',
                       twin_name, table_oid::regclass, expression);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE OR REPLACE FUNCTION pinwheel_gin_twins_on_create() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    command record;
BEGIN
    FOR command IN SELECT objid FROM pg_event_trigger_ddl_commands()
                   WHERE command_tag = 'CREATE INDEX' AND object_type = 'index' LOOP
        PERFORM pinwheel_gin_twins(command.objid);
    END LOOP;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pinwheel_gin_twins') THEN
        CREATE EVENT TRIGGER pinwheel_gin_twins ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
            EXECUTE FUNCTION pinwheel_gin_twins_on_create();
    END IF;
END
$$;

-- indexes created before the trigger existed (a store started by an older version); one
-- transaction per index (\gexec), or a store with many collections runs out of lock slots
SELECT format('SELECT pinwheel_gin_twins(%s)', i.indexrelid) FROM pg_index i \gexec
