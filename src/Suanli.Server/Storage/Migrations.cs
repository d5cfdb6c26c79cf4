using Microsoft.Data.Sqlite;

namespace Suanli.Server.Storage;

/// <summary>
/// Numbered schema migrations. Each runs once, in order, in its own transaction, and is recorded in
/// <c>schema_migrations</c>; a database newer than this build is refused rather than guessed at.
/// </summary>
public static class Migrations
{
    /// <summary>The migrations, numbered from 1. Never edit a shipped one; append.</summary>
    public static IReadOnlyList<string> All { get; } =
    [
        """
        CREATE TABLE tenants(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            sector TEXT NOT NULL,
            weight REAL NOT NULL,
            created INTEGER NOT NULL);
        CREATE TABLE providers(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            region TEXT NOT NULL,
            state TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            last_heartbeat INTEGER,
            groups TEXT NOT NULL,
            created INTEGER NOT NULL);
        CREATE TABLE api_keys(
            id INTEGER PRIMARY KEY,
            hash BLOB NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('operator','provider','tenant')),
            tenant_id INTEGER REFERENCES tenants(id),
            provider_id INTEGER REFERENCES providers(id),
            created INTEGER NOT NULL,
            revoked INTEGER);
        CREATE TABLE jobs(
            id INTEGER PRIMARY KEY,
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued','leased','running','succeeded','failed','cancelled','lost')),
            attempt INTEGER NOT NULL,
            max_attempts INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            submitted INTEGER NOT NULL,
            provider_id INTEGER REFERENCES providers(id),
            group_id TEXT,
            epoch INTEGER,
            allocation TEXT,
            started INTEGER,
            ended INTEGER,
            exit_code INTEGER,
            reason TEXT,
            idempotency_key TEXT,
            UNIQUE (tenant_id, idempotency_key));
        CREATE INDEX jobs_active ON jobs(state) WHERE state IN ('queued','leased','running');
        CREATE INDEX jobs_tenant ON jobs(tenant_id, id);
        CREATE TABLE job_events(
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            seq INTEGER NOT NULL,
            at INTEGER NOT NULL,
            state TEXT NOT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (job_id, seq));
        CREATE TABLE job_logs(
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            seq INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (job_id, seq));
        CREATE TABLE usage(
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            tenant_id INTEGER NOT NULL,
            provider_id INTEGER NOT NULL,
            group_id TEXT NOT NULL,
            model TEXT,
            cards INTEGER NOT NULL,
            gpu_milli INTEGER NOT NULL,
            milli_cpu INTEGER NOT NULL,
            memory_mib INTEGER NOT NULL,
            started INTEGER NOT NULL,
            ended INTEGER NOT NULL,
            PRIMARY KEY (job_id, attempt));
        CREATE INDEX usage_time ON usage(ended);
        CREATE TABLE idempotency(
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            resource TEXT NOT NULL,
            created INTEGER NOT NULL,
            PRIMARY KEY (scope, key));
        """,
        // 2: log chunks carry the attempt and the agent's character offset, so a resent chunk is stored once.
        """
        ALTER TABLE job_logs ADD COLUMN attempt INTEGER;
        ALTER TABLE job_logs ADD COLUMN chunk_offset INTEGER;
        CREATE UNIQUE INDEX job_logs_chunk ON job_logs(job_id, attempt, chunk_offset) WHERE chunk_offset IS NOT NULL;
        """,
        // 3: what the provider's own accounting (Slurm) says about each attempt, kept beside Suanli's metering.
        """
        ALTER TABLE usage ADD COLUMN backend_elapsed INTEGER;
        ALTER TABLE usage ADD COLUMN backend_tres TEXT;
        """,
    ];

    /// <summary>Brings the database up to date.</summary>
    public static void Apply(SqliteConnection c)
    {
        using (var create = c.CreateCommand())
        {
            create.CommandText = "CREATE TABLE IF NOT EXISTS schema_migrations(version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)";
            create.ExecuteNonQuery();
        }

        long current;
        using (var q = c.CreateCommand())
        {
            q.CommandText = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";
            current = (long)q.ExecuteScalar()!;
        }

        if (current > All.Count)
        {
            throw new InvalidOperationException($"database schema version {current} is newer than this build knows ({All.Count}); upgrade suanli");
        }

        for (var v = (int)current + 1; v <= All.Count; v++)
        {
            using var tx = c.BeginTransaction();
            using (var m = c.CreateCommand())
            {
                m.Transaction = tx;
                m.CommandText = All[v - 1];
                m.ExecuteNonQuery();
            }

            using (var rec = c.CreateCommand())
            {
                rec.Transaction = tx;
                rec.CommandText = "INSERT INTO schema_migrations(version, applied) VALUES($v, strftime('%s','now'))";
                rec.Parameters.AddWithValue("$v", v);
                rec.ExecuteNonQuery();
            }

            tx.Commit();
        }
    }
}
