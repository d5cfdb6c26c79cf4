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
        // 4: the trading centre: double-entry ledger (append-only journal), offers, settlements, vouchers, relations, auction rounds.
        // An account's history is a chain, not an index: the account row points at its latest transfer (last_seq) and each
        // transfer at the previous one of its debit and of its credit account, so a transfer writes no random index pages.
        """
        CREATE TABLE ledger_accounts(
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            floor INTEGER,
            posted INTEGER NOT NULL DEFAULT 0,
            pending_debits INTEGER NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
            pending_credits INTEGER NOT NULL DEFAULT 0 CHECK (pending_credits >= 0),
            created INTEGER NOT NULL,
            last_seq INTEGER,
            prev_seq INTEGER,
            CHECK (floor IS NULL OR posted - pending_debits >= floor));
        CREATE TABLE ledger_transfers(
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('posted','pending','post','void')),
            debit TEXT NOT NULL REFERENCES ledger_accounts(id),
            credit TEXT NOT NULL REFERENCES ledger_accounts(id),
            amount INTEGER NOT NULL CHECK (amount >= 0),
            pending_id TEXT,
            code TEXT NOT NULL,
            job_id INTEGER,
            attempt INTEGER,
            memo TEXT,
            at INTEGER NOT NULL,
            debit_prev INTEGER,
            credit_prev INTEGER,
            CHECK (debit <> credit));
        CREATE UNIQUE INDEX ledger_pending_resolved ON ledger_transfers(pending_id) WHERE pending_id IS NOT NULL;
        CREATE TRIGGER ledger_transfers_append_only_u BEFORE UPDATE ON ledger_transfers BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END;
        CREATE TRIGGER ledger_transfers_append_only_d BEFORE DELETE ON ledger_transfers BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END;
        INSERT INTO ledger_accounts(id, kind, floor, created) VALUES ('platform:cash', 'cash', NULL, 0), ('platform:escrow', 'escrow', 0, 0), ('platform:fee', 'fee', 0, 0);
        CREATE TABLE offers(
            id INTEGER PRIMARY KEY,
            provider_id INTEGER NOT NULL REFERENCES providers(id),
            group_id TEXT NOT NULL,
            tier TEXT NOT NULL CHECK (tier IN ('on-demand','reserved','interruptible')),
            unit TEXT NOT NULL,
            price_fen INTEGER NOT NULL CHECK (price_fen >= 0),
            nodes INTEGER NOT NULL CHECK (nodes > 0),
            valid_from INTEGER NOT NULL,
            valid_to INTEGER NOT NULL,
            tenant_id INTEGER REFERENCES tenants(id),
            created INTEGER NOT NULL,
            withdrawn INTEGER,
            contract_fen INTEGER,
            contract_state TEXT CHECK (contract_state IN ('held','settled')),
            contract_charged_fen INTEGER,
            contract_fee_fen INTEGER,
            CHECK (valid_to > valid_from));
        CREATE TABLE settlements(
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            tenant_id INTEGER NOT NULL,
            provider_id INTEGER NOT NULL,
            group_id TEXT NOT NULL,
            offer_id INTEGER NOT NULL,
            tier TEXT NOT NULL,
            unit TEXT NOT NULL,
            price_fen INTEGER NOT NULL,
            seller_price_fen INTEGER NOT NULL,
            units_milli INTEGER NOT NULL,
            hold_fen INTEGER NOT NULL,
            voucher_id INTEGER,
            voucher_hold_fen INTEGER NOT NULL,
            voucher_share_bps INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('held','settled','voided')),
            metered_ms INTEGER,
            cost_fen INTEGER,
            tenant_fen INTEGER,
            voucher_fen INTEGER,
            provider_fen INTEGER,
            fee_fen INTEGER,
            held_at INTEGER NOT NULL,
            settled_at INTEGER,
            note TEXT,
            PRIMARY KEY (job_id, attempt));
        CREATE INDEX settlements_time ON settlements(settled_at);
        CREATE TABLE voucher_programmes(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            funder TEXT NOT NULL,
            budget_fen INTEGER NOT NULL CHECK (budget_fen > 0),
            share_bps INTEGER NOT NULL CHECK (share_bps BETWEEN 1 AND 10000),
            domestic_share_bps INTEGER CHECK (domestic_share_bps BETWEEN 1 AND 10000),
            tenant_cap_fen INTEGER NOT NULL CHECK (tenant_cap_fen > 0),
            sectors TEXT NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_to INTEGER NOT NULL,
            created INTEGER NOT NULL);
        CREATE TABLE vouchers(
            id INTEGER PRIMARY KEY,
            programme_id INTEGER NOT NULL REFERENCES voucher_programmes(id),
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
            valid_to INTEGER NOT NULL,
            created INTEGER NOT NULL,
            expired INTEGER);
        CREATE INDEX vouchers_tenant ON vouchers(tenant_id);
        CREATE TABLE relations(
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            provider_id INTEGER NOT NULL REFERENCES providers(id),
            note TEXT NOT NULL,
            created INTEGER NOT NULL,
            PRIMARY KEY (tenant_id, provider_id));
        CREATE TABLE market_rounds(
            id INTEGER PRIMARY KEY,
            instrument TEXT NOT NULL,
            at INTEGER NOT NULL,
            bids INTEGER NOT NULL,
            asks INTEGER NOT NULL,
            bid_lots INTEGER NOT NULL,
            ask_lots INTEGER NOT NULL,
            volume INTEGER NOT NULL,
            efficient_volume INTEGER NOT NULL,
            buyer_price_fen INTEGER NOT NULL,
            seller_price_fen INTEGER NOT NULL,
            reduced INTEGER NOT NULL);
        """,
        // 5: finished jobs per tenant by end time, for rebuilding the run-time predictor after a restart.
        """
        CREATE INDEX jobs_finished ON jobs(tenant_id, ended) WHERE state IN ('succeeded','failed') AND started IS NOT NULL AND ended IS NOT NULL;
        """,
        // 6: consent to reserved contracts (a proposal binds nobody until its tenant accepts it); per-attempt output
        // totals for the log cap; the hash of the request an idempotency key was first used with.
        """
        ALTER TABLE offers ADD COLUMN consent TEXT CHECK (consent IN ('proposed','accepted','declined'));
        ALTER TABLE offers ADD COLUMN accepted INTEGER;
        ALTER TABLE offers ADD COLUMN contract_settled INTEGER;
        UPDATE offers SET contract_settled = MIN(COALESCE(withdrawn, valid_to), valid_to) WHERE contract_state = 'settled';
        UPDATE offers SET consent = 'accepted', accepted = created WHERE contract_state IS NOT NULL;
        UPDATE offers SET consent = 'declined' WHERE tier = 'reserved' AND contract_state IS NULL;
        CREATE TABLE log_totals(
            job_id INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            stored_bytes INTEGER NOT NULL,
            dropped_bytes INTEGER NOT NULL,
            dropped_end INTEGER NOT NULL,
            marker_seq INTEGER,
            PRIMARY KEY (job_id, attempt));
        ALTER TABLE idempotency ADD COLUMN request_hash TEXT;
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
