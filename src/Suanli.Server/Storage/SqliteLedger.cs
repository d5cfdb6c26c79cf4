using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Data.Sqlite;
using Suanli.Core.Market;
using Suanli.Server.Ledger;

namespace Suanli.Server.Storage;

/// <summary>The trading centre's half of the SQLite store: the ledger, offers, settlements, vouchers and auction rounds.</summary>
public sealed partial class SqliteStore
{
    // ---- transfers ----
    public Task<IReadOnlyList<TransferOutcome>> TransferAsync(IReadOnlyList<TransferRequest> transfers, bool linked, long nowMs, CancellationToken ct = default) => Write<IReadOnlyList<TransferOutcome>>(c =>
    {
        var outcomes = new TransferOutcome[transfers.Count];
        for (var i = 0; i < transfers.Count; i++)
        {
            outcomes[i] = ApplyTransfer(c, transfers[i], nowMs);
            if (linked && !outcomes[i].Ok)
            {
                throw new StoreConflictException(outcomes[i].Result, $"transfers[{i}] ({transfers[i].Id}): {outcomes[i].Message}");
            }
        }

        return outcomes;
    }, ct);

    // The next journal sequence number of each writer connection (only the writer inserts transfers). A rolled-back
    // transfer leaves a gap, never a repeat: the counter only moves forward and starts above every stored seq.
    private static readonly ConditionalWeakTable<SqliteConnection, StrongBox<long>> NextSeq = new();

    private static long TakeSeq(SqliteConnection c)
    {
        var box = NextSeq.GetValue(c, k => new StrongBox<long>(Query(k, "SELECT COALESCE(MAX(seq), 0) + 1 FROM ledger_transfers", r => r.GetInt64(0))[0]));
        return box.Value++;
    }

    private static TransferOutcome Fail(TransferRequest t, string code, string message) => new(t.Id, code, t.Amount, message);

    /// <summary>Applies one transfer or changes nothing (every check comes before the first write, or is undone).</summary>
    private static TransferOutcome ApplyTransfer(SqliteConnection c, TransferRequest t, long now)
    {
        if (string.IsNullOrWhiteSpace(t.Id) || t.Id.Length > 128)
        {
            return Fail(t, "invalid", "id: required, at most 128 characters");
        }

        if (!TransferKinds.IsKnown(t.Kind))
        {
            return Fail(t, "invalid", $"kind: must be posted, pending, post or void, not '{t.Kind}'");
        }

        if (t.Amount < 0)
        {
            return Fail(t, "invalid", "amount: must not be negative (fen)");
        }

        if (t.Kind is TransferKinds.Post or TransferKinds.Void)
        {
            return Replay(c, t) ?? Resolve(c, t, now);
        }

        // Moves check their id at the insert (the hot path skips a lookup); a replay undoes its updates there.
        return Move(c, t, now);
    }

    /// <summary>The answer to a transfer whose id exists already: "exists" when it is the same transfer, else refused; null when new.</summary>
    private static TransferOutcome? Replay(SqliteConnection c, TransferRequest t)
    {
        var existing = Query(c, "SELECT kind, debit, credit, amount, pending_id FROM ledger_transfers WHERE id = $id",
            r => (Kind: r.GetString(0), Debit: r.GetString(1), Credit: r.GetString(2), Amount: r.GetInt64(3), Pending: NStr(r, 4)), ("$id", t.Id));
        if (existing.Count == 0)
        {
            return null;
        }

        var e = existing[0];
        var same = e.Kind == t.Kind && (t.Kind is TransferKinds.Post or TransferKinds.Void
            ? e.Pending == t.PendingId && (t.Kind == TransferKinds.Void || e.Amount == t.Amount)
            : e.Debit == t.Debit && e.Credit == t.Credit && (e.Amount == t.Amount || t.Balancing));
        return same ? new TransferOutcome(t.Id, "exists", e.Amount)
            : Fail(t, "id_reused", $"id: transfer '{t.Id}' exists with different fields");
    }

    private static bool EnsureAccount(SqliteConnection c, string id, long now)
    {
        if (Accounts.Describe(id) is not { } d)
        {
            return false;
        }

        using var cmd = Cmd(c, "INSERT OR IGNORE INTO ledger_accounts(id, kind, floor, created) VALUES($id, $k, $f, $t)", ("$id", id), ("$k", d.Kind), ("$f", d.Floor), ("$t", now));
        cmd.ExecuteNonQuery();
        return true;
    }

    private static int Update(SqliteConnection c, string sql, params (string, object?)[] args)
    {
        using var cmd = Cmd(c, sql, args);
        return cmd.ExecuteNonQuery();
    }

    private static TransferOutcome UnknownAccount(TransferRequest t, string side, string id) =>
        Fail(t, "unknown_account", $"{side}: '{id}' is not an account name (tenant:N, provider:N, programme:N, voucher:N, funder:NAME, platform:cash|escrow|fee)");

    private static (long Posted, long Held, long? Floor)? Balances(SqliteConnection c, string id)
    {
        var rows = Query(c, "SELECT posted, pending_debits, floor FROM ledger_accounts WHERE id = $id", r => (r.GetInt64(0), r.GetInt64(1), NLong(r, 2)), ("$id", id));
        return rows.Count == 0 ? null : rows[0];
    }

    private static TransferOutcome Move(SqliteConnection c, TransferRequest t, long now)
    {
        if (t.Debit == t.Credit)
        {
            return Replay(c, t) ?? Fail(t, "invalid", "credit: must differ from debit");
        }

        var pending = t.Kind == TransferKinds.Pending;
        var seq = TakeSeq(c);
        var creditSql = pending ? "UPDATE ledger_accounts SET pending_credits = pending_credits + $a, prev_seq = last_seq, last_seq = $s WHERE id = $id"
            : "UPDATE ledger_accounts SET posted = posted + $a, prev_seq = last_seq, last_seq = $s WHERE id = $id";
        var creditUndo = pending ? "UPDATE ledger_accounts SET pending_credits = pending_credits - $a, last_seq = prev_seq WHERE id = $id"
            : "UPDATE ledger_accounts SET posted = posted - $a, last_seq = prev_seq WHERE id = $id";
        var amount = t.Amount;
        if (t.Balancing)
        {
            if (!EnsureAccount(c, t.Debit, now))
            {
                return Replay(c, t) ?? UnknownAccount(t, "debit", t.Debit);
            }

            var (posted, held, floor) = Balances(c, t.Debit)!.Value;
            if (floor is { } f)
            {
                amount = Math.Max(0, Math.Min(amount, posted - held - f));
            }
        }

        if (Update(c, creditSql, ("$a", amount), ("$s", seq), ("$id", t.Credit)) == 0)
        {
            if (!EnsureAccount(c, t.Credit, now))
            {
                return Replay(c, t) ?? UnknownAccount(t, "credit", t.Credit);
            }

            Update(c, creditSql, ("$a", amount), ("$s", seq), ("$id", t.Credit));
        }

        var debitSql = pending
            ? "UPDATE ledger_accounts SET pending_debits = pending_debits + $a, prev_seq = last_seq, last_seq = $s WHERE id = $id AND (floor IS NULL OR posted - pending_debits - $a >= floor)"
            : "UPDATE ledger_accounts SET posted = posted - $a, prev_seq = last_seq, last_seq = $s WHERE id = $id AND (floor IS NULL OR posted - pending_debits - $a >= floor)";
        var debited = Update(c, debitSql, ("$a", amount), ("$s", seq), ("$id", t.Debit)) == 1;
        if (!debited && Balances(c, t.Debit) is null)
        {
            // First use of the debit account: open it (by its name's rule) and try once more.
            debited = EnsureAccount(c, t.Debit, now) && Update(c, debitSql, ("$a", amount), ("$s", seq), ("$id", t.Debit)) == 1;
        }

        if (!debited)
        {
            // Undo the credit: nothing of this transfer stays.
            Update(c, creditUndo, ("$a", amount), ("$id", t.Credit));
            if (Balances(c, t.Debit) is not { } d)
            {
                return Replay(c, t) ?? UnknownAccount(t, "debit", t.Debit);
            }

            return Replay(c, t) ?? Fail(t, "insufficient_funds",
                $"amount: account {t.Debit} has {Money.Yuan(d.Posted - d.Held)} available (balance {Money.Yuan(d.Posted)}, held {Money.Yuan(d.Held)}, floor {Money.Yuan(d.Floor ?? 0)}); the transfer needs {Money.Yuan(amount)}");
        }

        if (Insert(c, seq, t, t.Debit, t.Credit, amount, now) == 0)
        {
            // The id exists: this is a replay (or a reuse). Take the updates back and answer as the first time.
            Update(c, creditUndo, ("$a", amount), ("$id", t.Credit));
            Update(c, pending ? "UPDATE ledger_accounts SET pending_debits = pending_debits - $a, last_seq = prev_seq WHERE id = $id"
                : "UPDATE ledger_accounts SET posted = posted + $a, last_seq = prev_seq WHERE id = $id", ("$a", amount), ("$id", t.Debit));
            return Replay(c, t)!;
        }

        return new TransferOutcome(t.Id, "created", amount);
    }

    private static TransferOutcome Resolve(SqliteConnection c, TransferRequest t, long now)
    {
        if (t.PendingId is null)
        {
            return Fail(t, "invalid", "pendingId: required for post and void");
        }

        // The hold and whatever resolved it already, in one lookup.
        var p = Query(c, "SELECT h.debit, h.credit, h.amount, r.id FROM ledger_transfers h LEFT JOIN ledger_transfers r ON r.pending_id = h.id WHERE h.id = $id AND h.kind = 'pending'",
            r => (D: r.GetString(0), C: r.GetString(1), A: r.GetInt64(2), By: NStr(r, 3)), ("$id", t.PendingId));
        if (p.Count == 0)
        {
            return Fail(t, "pending_not_found", $"pendingId: no pending transfer '{t.PendingId}'");
        }

        var (debit, credit, held, resolvedBy) = p[0];
        if (resolvedBy is { } by)
        {
            return Fail(t, "already_resolved", $"pendingId: hold '{t.PendingId}' was already resolved by '{by}'");
        }

        var amount = t.Kind == TransferKinds.Void ? 0 : t.Amount;
        if (amount > held)
        {
            return Fail(t, "exceeds_hold", $"amount: {Money.Yuan(amount)} exceeds the hold of {Money.Yuan(held)}");
        }

        var seq = TakeSeq(c);
        Update(c, "UPDATE ledger_accounts SET pending_debits = pending_debits - $h, posted = posted - $a, prev_seq = last_seq, last_seq = $s WHERE id = $id", ("$h", held), ("$a", amount), ("$s", seq), ("$id", debit));
        Update(c, "UPDATE ledger_accounts SET pending_credits = pending_credits - $h, posted = posted + $a, prev_seq = last_seq, last_seq = $s WHERE id = $id", ("$h", held), ("$a", amount), ("$s", seq), ("$id", credit));
        Insert(c, seq, t, debit, credit, amount, now);
        return new TransferOutcome(t.Id, "created", amount);
    }

    /// <summary>Appends a transfer; 0 when its id exists already (nothing written).</summary>
    private static int Insert(SqliteConnection c, long seq, TransferRequest t, string debit, string credit, long amount, long now) =>
        Update(c, """
            INSERT INTO ledger_transfers(seq, id, kind, debit, credit, amount, pending_id, code, job_id, attempt, memo, at, debit_prev, credit_prev)
            VALUES($s, $id, $k, $d, $c, $a, $p, $code, $j, $at, $m, $t, (SELECT prev_seq FROM ledger_accounts WHERE id = $d), (SELECT prev_seq FROM ledger_accounts WHERE id = $c))
            ON CONFLICT(id) DO NOTHING
            """, ("$s", seq), ("$id", t.Id), ("$k", t.Kind), ("$d", debit), ("$c", credit), ("$a", amount), ("$p", t.PendingId), ("$code", t.Code), ("$j", t.JobId), ("$at", t.Attempt),
            ("$m", t.Memo), ("$t", now));

    private static void Linked(SqliteConnection c, long now, params TransferRequest[] transfers)
    {
        foreach (var t in transfers)
        {
            var o = ApplyTransfer(c, t, now);
            if (!o.Ok)
            {
                throw new StoreConflictException(o.Result, $"{t.Code}: {o.Message}");
            }
        }
    }

    // ---- accounts and journal ----
    private const string AccountCols = "id, kind, floor, posted, pending_debits, pending_credits, created";

    private static LedgerAccount MapAccount(SqliteDataReader r) => new(r.GetString(0), r.GetString(1), NLong(r, 2), r.GetInt64(3), r.GetInt64(4), r.GetInt64(5), r.GetInt64(6));

    public Task<LedgerAccount?> AccountAsync(string id, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {AccountCols} FROM ledger_accounts WHERE id = $id", MapAccount, ("$id", id)).FirstOrDefault(), ct);

    public Task<IReadOnlyList<LedgerAccount>> AccountsAsync(string? prefix, CancellationToken ct = default) => Read<IReadOnlyList<LedgerAccount>>(c =>
        Query(c, $"SELECT {AccountCols} FROM ledger_accounts WHERE $p IS NULL OR substr(id, 1, length($p)) = $p ORDER BY id", MapAccount, ("$p", prefix)), ct);

    public Task<IReadOnlyDictionary<long, long>> SpendableAsync(long nowMs, CancellationToken ct = default) => Read<IReadOnlyDictionary<long, long>>(c =>
    {
        var spendable = new Dictionary<long, long>();
        foreach (var (id, fen) in Query(c, "SELECT CAST(substr(id, 8) AS INTEGER), CASE WHEN floor IS NULL THEN NULL ELSE posted - pending_debits - floor END FROM ledger_accounts WHERE substr(id, 1, 7) = 'tenant:'",
            r => (r.GetInt64(0), NLong(r, 1))))
        {
            spendable[id] = fen is { } f ? Math.Max(0, f) : long.MaxValue;
        }

        foreach (var (tenant, fen) in Query(c, """
            SELECT v.tenant_id, SUM(MAX(0, a.posted - a.pending_debits)) FROM vouchers v JOIN ledger_accounts a ON a.id = 'voucher:' || v.id
            WHERE v.expired IS NULL AND v.valid_to > $now GROUP BY v.tenant_id
            """, r => (r.GetInt64(0), r.GetInt64(1)), ("$now", nowMs)))
        {
            var wallet = spendable.GetValueOrDefault(tenant);
            spendable[tenant] = wallet == long.MaxValue ? wallet : checked(wallet + fen);
        }

        return spendable;
    }, ct);

    private const string TransferCols = "seq, id, kind, debit, credit, amount, pending_id, code, job_id, attempt, memo, at";

    private static LedgerTransfer MapTransfer(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt64(5),
        NStr(r, 6), r.GetString(7), NLong(r, 8), r.IsDBNull(9) ? null : r.GetInt32(9), NStr(r, 10), r.GetInt64(11));

    /// <summary>
    /// Newest first. With an account, follows the account's chain (last_seq, then each transfer's pointer for that
    /// side), so a page costs its length in rowid lookups, however long the journal. <paramref name="before"/>: the
    /// cursor of the previous page (0 = from the newest).
    /// </summary>
    public Task<Page<LedgerTransfer>> TransfersAsync(string? account, long before, int limit, CancellationToken ct = default) => Read(c =>
    {
        var items = new List<LedgerTransfer>(Math.Min(limit + 1, 1024));
        if (account is null)
        {
            items = Query(c, $"SELECT {TransferCols} FROM ledger_transfers WHERE $b = 0 OR seq < $b ORDER BY seq DESC LIMIT $l", MapTransfer, ("$b", before), ("$l", limit + 1));
        }
        else
        {
            var at = before == 0
                ? Query(c, "SELECT last_seq FROM ledger_accounts WHERE id = $a", r => NLong(r, 0), ("$a", account)).FirstOrDefault()
                : Query(c, "SELECT CASE WHEN debit = $a THEN debit_prev ELSE credit_prev END FROM ledger_transfers WHERE seq = $b", r => NLong(r, 0), ("$a", account), ("$b", before)).FirstOrDefault();
            while (at is { } seq && items.Count <= limit)
            {
                var t = Query(c, $"SELECT {TransferCols}, debit_prev, credit_prev FROM ledger_transfers WHERE seq = $s", r => (T: MapTransfer(r), D: NLong(r, 12), C: NLong(r, 13)), ("$s", seq))[0];
                items.Add(t.T);
                at = t.T.Debit == account ? t.D : t.C;
            }
        }

        var next = items.Count > limit ? items[limit - 1].Seq.ToString(CultureInfo.InvariantCulture) : null;
        return new Page<LedgerTransfer>(items.Count > limit ? items.GetRange(0, limit) : items, next);
    }, ct);

    // ---- verification ----
    /// <summary>Loads the rows <see cref="LedgerVerifier"/> checks in one snapshot; the rules are the verifier's.</summary>
    public Task<LedgerReport> VerifyAsync(int feeBps, CancellationToken ct = default) => Read(c =>
    {
        using var snapshot = c.BeginTransaction(deferred: true);
        var accounts = Query(c, $"SELECT {AccountCols}, last_seq FROM ledger_accounts", r => new AccountRow(MapAccount(r), NLong(r, 7)));
        var usage = Query(c, "SELECT job_id, attempt, started, ended FROM usage", r => (J: r.GetInt64(0), A: r.GetInt32(1), Ms: r.GetInt64(3) - r.GetInt64(2)))
            .ToDictionary(u => (u.J, u.A), u => u.Ms);
        var settlements = Query(c, $"SELECT {SettlementCols} FROM settlements", MapSettlement);
        var contracts = Query(c, $"SELECT {OfferCols} FROM offers WHERE contract_state IS NOT NULL", MapOffer);
        var journal = Query(c, $"SELECT {TransferCols}, debit_prev, credit_prev FROM ledger_transfers ORDER BY seq", r => new JournalRow(MapTransfer(r), NLong(r, 12), NLong(r, 13)));
        return LedgerVerifier.Verify(new LedgerSnapshot(accounts, journal, usage, settlements, contracts), feeBps);
    }, ct);

    // ---- offers ----
    private const string OfferCols = "id, provider_id, group_id, tier, unit, price_fen, nodes, valid_from, valid_to, tenant_id, created, withdrawn, contract_fen, contract_state, contract_charged_fen, contract_fee_fen, consent, accepted, contract_settled";

    private static OfferRecord MapOffer(SqliteDataReader r) => new(r.GetInt64(0), r.GetInt64(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt64(5), r.GetInt32(6),
        r.GetInt64(7), r.GetInt64(8), NLong(r, 9), r.GetInt64(10), NLong(r, 11))
    {
        ContractFen = NLong(r, 12), ContractState = NStr(r, 13), ContractChargedFen = NLong(r, 14), ContractFeeFen = NLong(r, 15), Consent = NStr(r, 16), AcceptedMs = NLong(r, 17), ContractSettledMs = NLong(r, 18),
    };

    public Task<OfferRecord> CreateOfferAsync(OfferRecord offer, CancellationToken ct = default) => Write(c =>
    {
        var o = offer;
        var provider = Query(c, $"SELECT {ProviderCols} FROM providers WHERE id = $id", MapProvider, ("$id", o.ProviderId)).FirstOrDefault()
            ?? throw new StoreConflictException("not_found", $"providerId: provider {o.ProviderId} does not exist");
        var group = provider.Groups.FirstOrDefault(g => g.Id == o.GroupId)
            ?? throw new StoreConflictException("unknown_group", $"group: provider {provider.Name} has registered no node group '{o.GroupId}' (it has: {string.Join(", ", provider.Groups.Select(g => g.Id))})");
        var overlapping = Query(c, "SELECT COALESCE(SUM(nodes), 0) FROM offers WHERE provider_id = $p AND group_id = $g AND withdrawn IS NULL AND valid_from < $to AND valid_to > $from",
            r => r.GetInt64(0), ("$p", o.ProviderId), ("$g", o.GroupId), ("$from", o.ValidFromMs), ("$to", o.ValidToMs))[0];
        if (Contracts.OverCapacity(o.GroupId, group.Nodes, overlapping, o.Nodes) is { } over)
        {
            throw new StoreConflictException(over.Code, over.Message);
        }

        // A reserved contract is only a proposal here: nothing is escrowed and it sells nothing until the tenant accepts.
        var reserved = o.Tier == Suanli.Core.Market.Tiers.Reserved;
        return Query(c, $"INSERT INTO offers(provider_id, group_id, tier, unit, price_fen, nodes, valid_from, valid_to, tenant_id, created, contract_fen, consent) VALUES($p, $g, $tier, $u, $price, $n, $f, $t, $ten, $c, $cv, $cs) RETURNING {OfferCols}",
            MapOffer, ("$p", o.ProviderId), ("$g", o.GroupId), ("$tier", o.Tier), ("$u", o.Unit), ("$price", o.PriceFen), ("$n", o.Nodes), ("$f", o.ValidFromMs), ("$t", o.ValidToMs),
            ("$ten", o.TenantId), ("$c", o.CreatedMs), ("$cv", reserved ? o.ContractFen : null), ("$cs", reserved ? Consents.Proposed : null))[0];
    }, ct);

    public Task<OfferRecord> AnswerContractAsync(long id, long? tenantId, bool accept, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        var o = Query(c, $"SELECT {OfferCols} FROM offers WHERE id = $id", MapOffer, ("$id", id)).FirstOrDefault();
        if (o is null || o.Tier != Suanli.Core.Market.Tiers.Reserved || (tenantId is { } t && o.TenantId != t))
        {
            throw new StoreConflictException("not_found", $"contract {id} does not exist or is not offered to you");
        }

        if (Contracts.AnswerRefusal(id, o.Consent, o.WithdrawnMs is not null, accept, o.ValidFromMs, nowMs) is { } refused)
        {
            throw new StoreConflictException(refused.Code, refused.Message);
        }

        if (!accept)
        {
            return Query(c, $"UPDATE offers SET consent = 'declined', withdrawn = $now WHERE id = $id RETURNING {OfferCols}", MapOffer, ("$now", nowMs), ("$id", id))[0];
        }

        var provider = Query(c, $"SELECT {ProviderCols} FROM providers WHERE id = $id", MapProvider, ("$id", o.ProviderId))[0];
        var rec = Query(c, $"UPDATE offers SET consent = 'accepted', accepted = $now, contract_state = CASE WHEN contract_fen > 0 THEN 'held' END WHERE id = $id RETURNING {OfferCols}",
            MapOffer, ("$now", nowMs), ("$id", id))[0];
        if (rec.ContractFen is > 0)
        {
            // Take-or-pay: the contract's whole value is escrowed from the tenant's wallet now, or the acceptance fails.
            Linked(c, nowMs, Postings.ContractHold(rec, provider.Name));
        }

        return rec;
    }, ct);

    public Task<IReadOnlyList<OfferRecord>> OffersAsync(CancellationToken ct = default) => Read<IReadOnlyList<OfferRecord>>(c => Query(c, $"SELECT {OfferCols} FROM offers ORDER BY id", MapOffer), ct);

    public Task<OfferRecord> WithdrawOfferAsync(long id, long? providerId, long nowMs, CancellationToken ct = default) => Write(c =>
        Query(c, $"UPDATE offers SET withdrawn = $t WHERE id = $id AND withdrawn IS NULL AND ($p IS NULL OR provider_id = $p) RETURNING {OfferCols}", MapOffer,
            ("$t", nowMs), ("$id", id), ("$p", providerId)).FirstOrDefault()
        ?? throw new StoreConflictException("not_found", $"offer {id} does not exist, is not yours or was withdrawn already"), ct);

    public Task<int> SettleContractsAsync(long nowMs, int feeBps, CancellationToken ct = default) => Write(c =>
    {
        var due = Query(c, $"SELECT {OfferCols} FROM offers WHERE contract_state = 'held' AND (valid_to <= $now OR withdrawn IS NOT NULL)", MapOffer, ("$now", nowMs));
        foreach (var o in due)
        {
            var (transfers, charged, fee) = Postings.ContractSettlement(o, feeBps);
            Linked(c, nowMs, [.. transfers]);
            Update(c, "UPDATE offers SET contract_state = 'settled', contract_charged_fen = $ch, contract_fee_fen = $f, contract_settled = $now WHERE id = $id",
                ("$ch", charged), ("$f", fee), ("$now", nowMs), ("$id", o.Id));
        }

        return due.Count;
    }, ct);

    // ---- settlements ----
    private const string SettlementCols = "job_id, attempt, tenant_id, provider_id, group_id, offer_id, tier, unit, price_fen, seller_price_fen, units_milli, hold_fen, voucher_id, voucher_hold_fen, voucher_share_bps, state, metered_ms, cost_fen, tenant_fen, voucher_fen, provider_fen, fee_fen, held_at, settled_at, note";

    private static SettlementRecord MapSettlement(SqliteDataReader r) => new(r.GetInt64(0), r.GetInt32(1), r.GetInt64(2), r.GetInt64(3), r.GetString(4), r.GetInt64(5),
        r.GetString(6), r.GetString(7), r.GetInt64(8), r.GetInt64(9), r.GetInt64(10), r.GetInt64(11), NLong(r, 12), r.GetInt64(13), r.GetInt32(14), r.GetString(15),
        NLong(r, 16), NLong(r, 17), NLong(r, 18), NLong(r, 19), NLong(r, 20), NLong(r, 21), r.GetInt64(22), NLong(r, 23), NStr(r, 24));

    /// <summary>Holds the estimated cost of a freshly leased attempt: the voucher the rules choose first (up to its share), the wallet for the rest.</summary>
    private static void HoldLocked(SqliteConnection c, JobRecord job, HoldPlan h, long now)
    {
        var provider = job.ProviderId!.Value;
        // The tenant's sector and whether it is a related party of the provider, in one point read.
        var (sector, related) = Query(c, "SELECT sector, EXISTS (SELECT 1 FROM relations WHERE tenant_id = $t AND provider_id = $p) FROM tenants WHERE id = $t",
            r => (r.GetString(0), r.GetInt64(1) != 0), ("$t", job.TenantId), ("$p", provider)).FirstOrDefault(("", false));
        var v = VoucherRules.Choose(VoucherTermsLocked(c, job.TenantId, now), sector, related, now);
        long voucherHold = 0;
        var share = v is null ? 0 : VoucherRules.ShareBps(v, h.Domestic);
        if (v is not null)
        {
            var o = ApplyTransfer(c, Postings.VoucherHold(job, v.VoucherId, h, share), now);
            if (!o.Ok)
            {
                throw new StoreConflictException(o.Result, $"voucher hold: {o.Message}");
            }

            voucherHold = o.Amount;
        }

        Linked(c, now, Postings.TenantHold(job, h, voucherHold));
        Update(c, $"INSERT INTO settlements({SettlementCols}) VALUES($j, $a, $t, $p, $g, $o, $tier, $u, $price, $sp, $um, $h, $v, $vh, $vs, 'held', NULL, NULL, NULL, NULL, NULL, NULL, $now, NULL, NULL)",
            ("$j", job.Id), ("$a", job.Attempt), ("$t", job.TenantId), ("$p", provider), ("$g", job.GroupId), ("$o", h.OfferId), ("$tier", h.Tier), ("$u", h.Unit),
            ("$price", h.PriceFen), ("$sp", h.SellerPriceFen), ("$um", h.UnitsMilli), ("$h", h.HoldFen), ("$v", v?.VoucherId), ("$vh", voucherHold), ("$vs", share), ("$now", now));
    }

    /// <summary>The tenant's unexpired vouchers with their programmes' terms, for the voucher rules to choose from.</summary>
    private static List<VoucherTerms> VoucherTermsLocked(SqliteConnection c, long tenantId, long now) => Query(c, """
        SELECT v.id, v.valid_to, v.expired IS NOT NULL, COALESCE(a.posted - a.pending_debits, 0), p.share_bps, p.domestic_share_bps, p.sectors, p.valid_from, p.valid_to
        FROM vouchers v JOIN voucher_programmes p ON p.id = v.programme_id LEFT JOIN ledger_accounts a ON a.id = 'voucher:' || v.id
        WHERE v.tenant_id = $t AND v.expired IS NULL AND v.valid_to > $now
        """, r => new VoucherTerms(r.GetInt64(0), r.GetInt64(1), r.GetInt64(2) != 0, r.GetInt64(3), r.GetInt32(4), r.IsDBNull(5) ? null : r.GetInt32(5),
            JsonSerializer.Deserialize<List<string>>(r.GetString(6)) ?? [], r.GetInt64(7), r.GetInt64(8)), ("$t", tenantId), ("$now", now));

    /// <summary>Charges or voids a held attempt by <see cref="Postings.Settle"/>; false when it holds nothing (unpriced, or ended already).</summary>
    private static bool SettleLocked(SqliteConnection c, long jobId, SettlePlan plan, int feeBps, long now)
    {
        var s = Query(c, $"SELECT {SettlementCols} FROM settlements WHERE job_id = $j AND attempt = $a AND state = 'held'", MapSettlement, ("$j", jobId), ("$a", plan.Attempt)).FirstOrDefault();
        if (s is null)
        {
            return false;
        }

        var (transfers, split) = Postings.Settle(s, plan, feeBps);
        Linked(c, now, [.. transfers]);
        if (split is not { } x)
        {
            Update(c, "UPDATE settlements SET state = 'voided', settled_at = $now, note = $n WHERE job_id = $j AND attempt = $a", ("$now", now), ("$n", plan.Note), ("$j", jobId), ("$a", plan.Attempt));
            return true;
        }

        Update(c, "UPDATE settlements SET state = 'settled', metered_ms = $ms, cost_fen = $c, tenant_fen = $t, voucher_fen = $v, provider_fen = $p, fee_fen = $f, settled_at = $now, note = $n WHERE job_id = $j AND attempt = $a",
            ("$ms", plan.MeteredMs), ("$c", x.Charged), ("$t", x.Tenant), ("$v", x.Voucher), ("$p", x.Provider), ("$f", x.Fee), ("$now", now), ("$n", plan.Note),
            ("$j", jobId), ("$a", plan.Attempt));
        return true;
    }

    public Task<bool> SettleAsync(long jobId, SettlePlan plan, int feeBps, long nowMs, CancellationToken ct = default) => Write(c => SettleLocked(c, jobId, plan, feeBps, nowMs), ct);

    public Task<IReadOnlyList<SettlementRecord>> SettlementsAsync(SettlementQuery query, CancellationToken ct = default) => Read<IReadOnlyList<SettlementRecord>>(c =>
        Query(c, $"""
            SELECT {SettlementCols} FROM settlements WHERE ($t IS NULL OR tenant_id = $t) AND ($p IS NULL OR provider_id = $p) AND ($j IS NULL OR job_id = $j)
              AND ($g IS NULL OR voucher_id IN (SELECT id FROM vouchers WHERE programme_id = $g)) AND COALESCE(settled_at, held_at) >= $f AND COALESCE(settled_at, held_at) < $to
            ORDER BY COALESCE(settled_at, held_at), job_id, attempt
            """, MapSettlement, ("$t", query.TenantId), ("$p", query.ProviderId), ("$j", query.JobId), ("$g", query.ProgrammeId), ("$f", query.FromMs), ("$to", query.ToMs)), ct);

    // ---- vouchers ----
    private const string ProgrammeCols = "id, name, funder, budget_fen, share_bps, domestic_share_bps, tenant_cap_fen, sectors, valid_from, valid_to, created";

    private static ProgrammeRecord MapProgramme(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt64(3), r.GetInt32(4),
        r.IsDBNull(5) ? null : r.GetInt32(5), r.GetInt64(6), JsonSerializer.Deserialize<List<string>>(r.GetString(7)) ?? [], r.GetInt64(8), r.GetInt64(9), r.GetInt64(10));

    public Task<ProgrammeRecord> CreateProgrammeAsync(ProgrammeRecord programme, CancellationToken ct = default) => Write(c =>
    {
        var p = programme;
        if (Query(c, "SELECT 1 FROM voucher_programmes WHERE name = $n", r => 1, ("$n", p.Name)).Count > 0)
        {
            throw new StoreConflictException("name_taken", $"name: a programme named '{p.Name}' already exists");
        }

        var rec = Query(c, $"INSERT INTO voucher_programmes(name, funder, budget_fen, share_bps, domestic_share_bps, tenant_cap_fen, sectors, valid_from, valid_to, created) VALUES($n, $f, $b, $s, $d, $cap, $sec, $vf, $vt, $c) RETURNING {ProgrammeCols}",
            MapProgramme, ("$n", p.Name), ("$f", p.Funder), ("$b", p.BudgetFen), ("$s", p.ShareBps), ("$d", p.DomesticShareBps), ("$cap", p.TenantCapFen),
            ("$sec", JsonSerializer.Serialize(p.Sectors)), ("$vf", p.ValidFromMs), ("$vt", p.ValidToMs), ("$c", p.CreatedMs))[0];
        Linked(c, p.CreatedMs, Postings.ProgrammeBudget(rec));
        return rec;
    }, ct);

    public Task<IReadOnlyList<ProgrammeRecord>> ProgrammesAsync(CancellationToken ct = default) => Read<IReadOnlyList<ProgrammeRecord>>(c => Query(c, $"SELECT {ProgrammeCols} FROM voucher_programmes ORDER BY id", MapProgramme), ct);

    private const string VoucherCols = "v.id, v.programme_id, v.tenant_id, v.amount_fen, v.valid_to, v.created, v.expired, COALESCE(a.posted - a.pending_debits, 0)";

    private static VoucherRecord MapVoucher(SqliteDataReader r) => new(r.GetInt64(0), r.GetInt64(1), r.GetInt64(2), r.GetInt64(3), r.GetInt64(4), r.GetInt64(5), NLong(r, 6), r.GetInt64(7));

    public Task<VoucherRecord> IssueVoucherAsync(long programmeId, long tenantId, long amountFen, long validToMs, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        var p = Query(c, $"SELECT {ProgrammeCols} FROM voucher_programmes WHERE id = $id", MapProgramme, ("$id", programmeId)).FirstOrDefault()
            ?? throw new StoreConflictException("not_found", $"programme {programmeId} does not exist");
        var tenant = Query(c, $"SELECT {TenantCols} FROM tenants WHERE id = $id", MapTenant, ("$id", tenantId)).FirstOrDefault()
            ?? throw new StoreConflictException("not_found", $"tenantId: tenant {tenantId} does not exist");
        var issued = Query(c, "SELECT COALESCE(SUM(amount_fen), 0) FROM vouchers WHERE programme_id = $p AND tenant_id = $t", r => r.GetInt64(0), ("$p", programmeId), ("$t", tenantId))[0];
        if (VoucherRules.IssueRefusal(p.Name, p.Sectors, p.ValidToMs, p.TenantCapFen, tenant.Name, tenant.Sector, issued, amountFen, validToMs, nowMs) is { } refused)
        {
            throw new StoreConflictException(refused.Code, refused.Message);
        }

        var id = Query(c, "INSERT INTO vouchers(programme_id, tenant_id, amount_fen, valid_to, created) VALUES($p, $t, $a, $v, $c) RETURNING id", r => r.GetInt64(0),
            ("$p", programmeId), ("$t", tenantId), ("$a", amountFen), ("$v", validToMs), ("$c", nowMs))[0];
        var o = ApplyTransfer(c, Postings.VoucherIssue(id, programmeId, tenant.Name, amountFen), nowMs);
        if (!o.Ok)
        {
            throw new StoreConflictException(o.Result == "insufficient_funds" ? "budget_exhausted" : o.Result, $"amount: programme '{p.Name}' cannot fund it: {o.Message}");
        }

        return Query(c, $"SELECT {VoucherCols} FROM vouchers v LEFT JOIN ledger_accounts a ON a.id = 'voucher:' || v.id WHERE v.id = $id", MapVoucher, ("$id", id))[0];
    }, ct);

    public Task<IReadOnlyList<VoucherRecord>> VouchersAsync(long? tenantId, long? programmeId, CancellationToken ct = default) => Read<IReadOnlyList<VoucherRecord>>(c =>
        Query(c, $"SELECT {VoucherCols} FROM vouchers v LEFT JOIN ledger_accounts a ON a.id = 'voucher:' || v.id WHERE ($t IS NULL OR v.tenant_id = $t) AND ($p IS NULL OR v.programme_id = $p) ORDER BY v.id",
            MapVoucher, ("$t", tenantId), ("$p", programmeId)), ct);

    public Task<int> ExpireVouchersAsync(long nowMs, CancellationToken ct = default) => Write(c =>
    {
        var due = Query(c, $"SELECT {VoucherCols} FROM vouchers v LEFT JOIN ledger_accounts a ON a.id = 'voucher:' || v.id WHERE v.valid_to <= $now AND (v.expired IS NULL OR a.posted - a.pending_debits > 0)",
            MapVoucher, ("$now", nowMs));
        foreach (var v in due)
        {
            if (Postings.VoucherExpiry(v, nowMs) is { } back)
            {
                Linked(c, nowMs, back);
            }

            Update(c, "UPDATE vouchers SET expired = COALESCE(expired, $now) WHERE id = $id", ("$now", nowMs), ("$id", v.Id));
        }

        return due.Count;
    }, ct);

    // ---- relations ----
    public Task<RelationRecord> AddRelationAsync(long tenantId, long providerId, string note, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        if (Query(c, "SELECT 1 FROM tenants WHERE id = $t", r => 1, ("$t", tenantId)).Count == 0 || Query(c, "SELECT 1 FROM providers WHERE id = $p", r => 1, ("$p", providerId)).Count == 0)
        {
            throw new StoreConflictException("not_found", $"tenantId/providerId: tenant {tenantId} or provider {providerId} does not exist");
        }

        Update(c, "INSERT OR REPLACE INTO relations(tenant_id, provider_id, note, created) VALUES($t, $p, $n, $c)", ("$t", tenantId), ("$p", providerId), ("$n", note), ("$c", nowMs));
        return new RelationRecord(tenantId, providerId, note, nowMs);
    }, ct);

    public Task<IReadOnlyList<RelationRecord>> RelationsAsync(CancellationToken ct = default) => Read<IReadOnlyList<RelationRecord>>(c =>
        Query(c, "SELECT tenant_id, provider_id, note, created FROM relations ORDER BY tenant_id, provider_id", r => new RelationRecord(r.GetInt64(0), r.GetInt64(1), r.GetString(2), r.GetInt64(3))), ct);

    // ---- auction rounds ----
    private const string RoundCols = "id, instrument, at, bids, asks, bid_lots, ask_lots, volume, efficient_volume, buyer_price_fen, seller_price_fen, reduced";

    private static RoundRecord MapRound(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetInt64(2), r.GetInt32(3), r.GetInt32(4), r.GetInt64(5), r.GetInt64(6),
        r.GetInt64(7), r.GetInt64(8), r.GetInt64(9), r.GetInt64(10), r.GetInt64(11) != 0);

    public Task<RoundRecord> RecordRoundAsync(RoundRecord round, CancellationToken ct = default) => Write(c =>
        Query(c, $"INSERT INTO market_rounds(instrument, at, bids, asks, bid_lots, ask_lots, volume, efficient_volume, buyer_price_fen, seller_price_fen, reduced) VALUES($i, $at, $b, $a, $bl, $al, $v, $ev, $bp, $sp, $r) RETURNING {RoundCols}",
            MapRound, ("$i", round.Instrument), ("$at", round.AtMs), ("$b", round.Bids), ("$a", round.Asks), ("$bl", round.BidLots), ("$al", round.AskLots), ("$v", round.Volume),
            ("$ev", round.EfficientVolume), ("$bp", round.BuyerPriceFen), ("$sp", round.SellerPriceFen), ("$r", round.Reduced ? 1 : 0))[0], ct);

    public Task<IReadOnlyList<RoundRecord>> RoundsAsync(string? instrument, int limit, CancellationToken ct = default) => Read<IReadOnlyList<RoundRecord>>(c =>
        Query(c, $"SELECT {RoundCols} FROM market_rounds WHERE $i IS NULL OR instrument = $i ORDER BY id DESC LIMIT $l", MapRound, ("$i", instrument), ("$l", limit)), ct);
}
