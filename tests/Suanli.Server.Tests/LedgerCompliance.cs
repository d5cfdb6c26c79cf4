using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Microsoft.Data.Sqlite;
using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>
/// What every ledger store must do (the compliance suite of the trading centre's port): model-based properties,
/// concurrency, vouchers, contracts, statements, holds and settlements through job transitions. Each engine inherits it
/// and runs it against a real database (SQLite here; the PostgreSQL adapter of issue 17 inherits the same class).
/// </summary>
public abstract class LedgerCompliance<TStore> : IDisposable
    where TStore : IControlStore, ILedgerStore
{
    protected string Dir { get; } = Path.Combine(Path.GetTempPath(), "suanli-ledger-" + Guid.NewGuid().ToString("N"));

    protected LedgerCompliance() => Directory.CreateDirectory(Dir);

    /// <summary>A new, empty store on a real database.</summary>
    protected abstract TStore Open();

    protected static TransferRequest Posted(string id, string debit, string credit, long amount) => new(id, TransferKinds.Posted, debit, credit, amount, "test");

    protected static TransferRequest Hold(string id, string debit, long amount) => new(id, TransferKinds.Pending, debit, Seller, amount, "test");

    private static readonly string Seller = Accounts.Provider(9);

    private static TransferRequest Resolve(string id, string kind, string pending, long amount) => new(id, kind, "", "", amount, "test") { PendingId = pending };

    /// <summary>
    /// For any sequence of top-ups, transfers, holds, posts, voids, replays and linked batches, the store agrees with a
    /// plain in-memory model after every step, refuses exactly what the model refuses, and verifies clean at the end.
    /// </summary>
    [Property(MaxTest = 25)]
    public Property AnySequence_MatchesTheModel_AndStaysBalanced(int seed)
    {
        var rng = new System.Random(seed);
        var store = Open();
        try
        {
            string[] wallets = [Accounts.Tenant(1), Accounts.Tenant(2), Accounts.Tenant(3)];
            var model = new Dictionary<string, (long Posted, long Held, long Credit)>();
            var holds = new Dictionary<string, (string Debit, long Amount)>();
            var resolved = new HashSet<string>();
            var done = new List<TransferRequest>();
            (long, long, long) Get(string a) => model.GetValueOrDefault(a);
            long Avail(string a) => Get(a).Item1 - Get(a).Item2;
            void Move(string d, string c, long amt, bool pending)
            {
                var x = Get(d);
                var y = Get(c);
                model[d] = pending ? (x.Item1, x.Item2 + amt, x.Item3) : (x.Item1 - amt, x.Item2, x.Item3);
                y = model.GetValueOrDefault(c);
                model[c] = pending ? (y.Item1, y.Item2, y.Item3 + amt) : (y.Item1 + amt, y.Item2, y.Item3);
            }

            bool Floored(string a) => a != Accounts.Cash;
            for (var step = 0; step < 40; step++)
            {
                var id = $"t{step}";
                var w = wallets[rng.Next(wallets.Length)];
                var amount = (long)rng.Next(0, 500);
                TransferRequest req;
                bool expectOk;
                Action apply = () => { };
                switch (rng.Next(7))
                {
                    case 0:
                        req = Posted(id, Accounts.Cash, w, amount);
                        expectOk = true;
                        apply = () => Move(Accounts.Cash, w, amount, false);
                        break;
                    case 1:
                        var to = wallets[(Array.IndexOf(wallets, w) + 1) % wallets.Length];
                        req = Posted(id, w, to, amount);
                        expectOk = Avail(w) >= amount;
                        apply = () => Move(w, to, amount, false);
                        break;
                    case 2:
                        req = Hold(id, w, amount);
                        expectOk = Avail(w) >= amount;
                        apply = () => { Move(w, Seller, amount, true); holds[id] = (w, amount); };
                        break;
                    case 3 or 4 when holds.Count > 0:
                        var (hid, h) = holds.ElementAt(rng.Next(holds.Count));
                        var post = rng.Next(3) > 0;
                        var amt = post ? rng.Next(0, (int)h.Amount + 50) : 0;
                        req = Resolve(id, post ? TransferKinds.Post : TransferKinds.Void, hid, amt);
                        expectOk = !resolved.Contains(hid) && amt <= h.Amount;
                        apply = () =>
                        {
                            resolved.Add(hid);
                            var d = Get(h.Debit);
                            model[h.Debit] = (d.Item1 - amt, d.Item2 - h.Amount, d.Item3);
                            var e = Get(Seller);
                            model[Seller] = (e.Item1 + amt, e.Item2, e.Item3 - h.Amount);
                        };
                        break;
                    case 5 when done.Count > 0:
                        req = done[rng.Next(done.Count)];
                        var replay = store.TransferAsync([req], false, step).GetAwaiter().GetResult()[0];
                        if (replay.Result != "exists")
                        {
                            return false.Label($"step {step}: replaying {req.Id} answered {replay.Result}");
                        }

                        continue;
                    case 6:
                        // A linked pair whose second leg overdraws: neither may stay.
                        var big = Avail(w) + 1 + amount;
                        var linked = new[] { Posted(id + "a", Accounts.Cash, w, amount), Posted(id + "b", w, Accounts.Fee, big + amount) };
                        try
                        {
                            store.TransferAsync(linked, true, step).GetAwaiter().GetResult();
                            return false.Label($"step {step}: an overdrawing linked batch was accepted");
                        }
                        catch (StoreConflictException e) when (e.Code == "insufficient_funds")
                        {
                        }

                        continue;
                    default:
                        continue;
                }

                var outcome = store.TransferAsync([req], false, step).GetAwaiter().GetResult()[0];
                if (outcome.Ok != expectOk)
                {
                    return false.Label($"step {step}: {req.Kind} {req.Id} of {req.Amount}: store says {outcome.Result} ({outcome.Message}), model expected ok={expectOk}");
                }

                if (expectOk)
                {
                    apply();
                    done.Add(req);
                }
            }

            foreach (var (account, m) in model)
            {
                var a = store.AccountAsync(account).GetAwaiter().GetResult();
                if (a is null || (a.Posted, a.PendingDebits, a.PendingCredits) != m)
                {
                    return false.Label($"{account}: store {a?.Posted}/{a?.PendingDebits}/{a?.PendingCredits}, model {m}");
                }

                if (Floored(account) && a.Available < 0)
                {
                    return false.Label($"{account} fell below its floor: {a.Available}");
                }
            }

            // Each account's history (followed along its chain, newest first, in pages of 3) is exactly its transfers.
            var journal = store.TransfersAsync(null, 0, 10_000).GetAwaiter().GetResult().Items;
            foreach (var account in model.Keys)
            {
                var expected = journal.Where(t => t.Debit == account || t.Credit == account).Select(t => t.Seq).ToList();
                var listed = new List<long>();
                long before = 0;
                do
                {
                    var page = store.TransfersAsync(account, before, 3).GetAwaiter().GetResult();
                    listed.AddRange(page.Items.Select(t => t.Seq));
                    before = page.Next is null ? -1 : long.Parse(page.Next, System.Globalization.CultureInfo.InvariantCulture);
                }
                while (before > 0);
                if (!expected.SequenceEqual(listed))
                {
                    return false.Label($"{account}: chain lists [{string.Join(",", listed)}], journal has [{string.Join(",", expected)}]");
                }
            }

            var report = store.VerifyAsync(500).GetAwaiter().GetResult();
            return (report.Ok && report.SumPosted == 0 && report.SumPendingDebits == report.SumPendingCredits).Label(string.Join("; ", report.Problems));
        }
        finally
        {
            store.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    [Fact]
    public async Task ThirtyTwoParallelSettlements_OnOneWallet_NeverDoubleSpend()
    {
        await using var s = Open();
        var wallet = Accounts.Tenant(7);
        await s.TransferAsync([Posted("topup", Accounts.Cash, wallet, 1000)], true, 1);

        // 32 concurrent holds of 100 fen on a 1,000 fen wallet: exactly 10 fit.
        var holds = await Task.WhenAll(Enumerable.Range(0, 32).Select(i => Task.Run(() => s.TransferAsync([Hold($"h{i}", wallet, 100)], false, 2))));
        var held = holds.Select(h => h[0]).Where(o => o.Ok).Select(o => o.Id).ToList();
        Assert.Equal(10, held.Count);
        Assert.All(holds.Select(h => h[0]).Where(o => !o.Ok), o => Assert.Equal("insufficient_funds", o.Result));

        // 32 concurrent settlements: each hold posted by two racing settlers (same id and a different id): one wins per hold.
        var posts = await Task.WhenAll(held.SelectMany(h => new[]
        {
            Task.Run(() => s.TransferAsync([Resolve("pay-" + h, TransferKinds.Post, h, 80)], false, 3)),
            Task.Run(() => s.TransferAsync([Resolve("pay-" + h, TransferKinds.Post, h, 80)], false, 3)),
            Task.Run(() => s.TransferAsync([Resolve("other-" + h, TransferKinds.Post, h, 80)], false, 3)),
        }).Take(32));
        var applied = posts.Select(p => p[0]).Where(o => o.Result == "created").ToList();
        var account = await s.AccountAsync(wallet);
        Assert.NotNull(account);
        var settledHolds = held.Count(h => posts.Any(p => p[0].Result == "created" && (p[0].Id == "pay-" + h || p[0].Id == "other-" + h)));
        Assert.Equal(settledHolds, applied.Count);
        Assert.Equal(1000 - (80 * applied.Count), account.Posted);
        Assert.Equal(100 * (10 - settledHolds), account.PendingDebits);
        Assert.True(account.Available >= 0);
        var report = await s.VerifyAsync(500);
        Assert.True(report.Ok, string.Join("; ", report.Problems));
    }

    [Fact]
    public async Task BadTransfers_AreRefusedNamingTheField_AndChangeNothing()
    {
        await using var s = Open();
        var outcomes = await s.TransferAsync(
        [
            Posted("neg", Accounts.Cash, Accounts.Tenant(1), -5),
            Posted("who", Accounts.Cash, "bank:9", 5),
            Posted("self", Accounts.Tenant(1), Accounts.Tenant(1), 5),
            Resolve("p", TransferKinds.Post, "nope", 5),
            new TransferRequest("k", "teleport", Accounts.Cash, Accounts.Tenant(1), 5, "x"),
        ], false, 1);
        Assert.Equal(["invalid", "unknown_account", "invalid", "pending_not_found", "invalid"], outcomes.Select(o => o.Result));
        Assert.Contains("amount", outcomes[0].Message, StringComparison.Ordinal);
        Assert.Contains("credit", outcomes[1].Message, StringComparison.Ordinal);
        Assert.Contains("kind", outcomes[4].Message, StringComparison.Ordinal);
        Assert.Empty((await s.TransfersAsync(null, 0, 10)).Items);
        var again = await s.TransferAsync([Posted("x", Accounts.Cash, Accounts.Tenant(1), 5)], true, 1);
        var reuse = await s.TransferAsync([Posted("x", Accounts.Cash, Accounts.Tenant(1), 6)], false, 1);
        Assert.Equal("id_reused", reuse[0].Result);
        Assert.Equal(5, (await s.AccountAsync(Accounts.Tenant(1)))!.Posted);
        Assert.Single(again);
    }

    [Fact]
    public async Task Vouchers_EnforceSectorCapBudgetAndExpiry()
    {
        await using var s = Open();
        var edu = await s.CreateTenantAsync("uni", "education", 1, 1);
        var bank = await s.CreateTenantAsync("bank", "finance", 1, 1);
        var p = await s.CreateProgrammeAsync(new ProgrammeRecord(0, "zz-2026", "city", 10_000, 5000, 8000, 6_000, ["education", "agriculture"], 0, 1_000_000, 1));
        Assert.Equal(10_000, (await s.AccountAsync(Accounts.Programme(p.Id)))!.Posted);
        Assert.Equal(-10_000, (await s.AccountAsync(Accounts.Funder("city")))!.Posted);

        var v = await s.IssueVoucherAsync(p.Id, edu.Id, 4_000, 500_000, 10);
        Assert.Equal(4_000, v.AvailableFen);
        var cap = await Assert.ThrowsAsync<StoreConflictException>(() => s.IssueVoucherAsync(p.Id, edu.Id, 2_001, 500_000, 10));
        Assert.Equal("cap_exceeded", cap.Code);
        Assert.Contains("20.00", cap.Message, StringComparison.Ordinal);
        var sector = await Assert.ThrowsAsync<StoreConflictException>(() => s.IssueVoucherAsync(p.Id, bank.Id, 100, 500_000, 10));
        Assert.Equal("not_eligible", sector.Code);
        var late = await Assert.ThrowsAsync<StoreConflictException>(() => s.IssueVoucherAsync(p.Id, edu.Id, 100, 2_000_000, 10));
        Assert.Equal("invalid", late.Code);
        var ended = await Assert.ThrowsAsync<StoreConflictException>(() => s.IssueVoucherAsync(p.Id, edu.Id, 100, 2_000_000, 1_000_001));
        Assert.Equal("expired", ended.Code);

        var other = await s.CreateTenantAsync("farm", "agriculture", 1, 1);
        await s.IssueVoucherAsync(p.Id, other.Id, 6_000, 500_000, 10);
        var broke = await Assert.ThrowsAsync<StoreConflictException>(() => s.IssueVoucherAsync(p.Id, edu.Id, 1, 500_000, 10));
        Assert.Equal("budget_exhausted", broke.Code);

        Assert.Equal(2, await s.ExpireVouchersAsync(500_000));
        Assert.Equal(10_000, (await s.AccountAsync(Accounts.Programme(p.Id)))!.Posted);
        Assert.All(await s.VouchersAsync(null, p.Id), x => Assert.Equal(0, x.AvailableFen));
        Assert.Equal(0, await s.ExpireVouchersAsync(600_000));
        Assert.True((await s.VerifyAsync(0)).Ok);
    }

    [Fact]
    public async Task MonthlyStatements_AddUp_ForAContractThatSpansTheMonthBoundary()
    {
        await using var s = Open();
        var t = await s.CreateTenantAsync("lab", "research", 1, 1);
        var p = await s.CreateProviderAsync("hpc", "r", 1);
        await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 8000, 16384, null, 0, 4, null)], 1);
        static long Ms(string iso) => DateTimeOffset.Parse(iso, System.Globalization.CultureInfo.InvariantCulture).ToUnixTimeMilliseconds();
        var (nov, dec, jan) = (Ms("2026-11-01T00:00:00Z"), Ms("2026-12-01T00:00:00Z"), Ms("2027-01-01T00:00:00Z"));
        await s.TransferAsync([new TransferRequest("top-1", TransferKinds.Posted, Accounts.Cash, Accounts.Tenant(t.Id), 10_000, "topup")], true, Ms("2026-11-20T00:00:00Z"));
        var offer = await s.CreateOfferAsync(new OfferRecord(0, p.Id, "g", "reserved", "core-hour", 100, 1, Ms("2026-11-25T00:00:00Z"), dec - 500, t.Id, Ms("2026-11-20T00:00:00Z"), null) { ContractFen = 7_000 });
        await s.AnswerContractAsync(offer.Id, t.Id, true, Ms("2026-11-21T00:00:00Z"));
        // The window ends half a second before midnight; the housekeeping loop posts the charge 0.8 s into December.
        Assert.Equal(0, await s.SettleContractsAsync(dec - 600, 500));
        Assert.Equal(1, await s.SettleContractsAsync(dec + 800, 500));
        var names = new Dictionary<long, string> { [p.Id] = p.Name };
        var tenants = new Dictionary<long, TenantRecord> { [t.Id] = t };
        foreach (var (from, to, month) in new[] { (nov, dec, "2026-11"), (dec, jan, "2026-12") })
        {
            var inv = await Statements.TenantAsync(s, t, from, to, month, names);
            Assert.Equal(inv.ClosingFen, inv.OpeningFen + inv.TopUpsFen - inv.PaidFen - inv.ContractsFen);
            var pay = await Statements.ProviderAsync(s, (await s.GetProviderAsync(p.Id))!, from, to, month, tenants);
            Assert.Equal(pay.ClosingFen, pay.OpeningFen + pay.EarnedFen + pay.ContractsNetFen - pay.PaidOutFen);
        }

        var november = await Statements.TenantAsync(s, t, nov, dec, "2026-11", names);
        var december = await Statements.TenantAsync(s, t, dec, jan, "2026-12", names);
        Assert.Equal((0L, 10_000L), (november.ContractsFen, november.ClosingFen));
        Assert.Equal((7_000L, 3_000L), (december.ContractsFen, december.ClosingFen));
    }

    [Fact]
    public async Task ReservedContracts_AreTakeOrPay_EscrowedUpFront_ProRataWhenEndedEarly()
    {
        await using var s = Open();
        var t = await s.CreateTenantAsync("lab", "research", 1, 1);
        var p = await s.CreateProviderAsync("hpc", "r", 1);
        await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 8000, 16384, null, 0, 4, null)], 1);
        OfferRecord Contract(long from, long to, long value) => new(0, p.Id, "g", "reserved", "core-hour", 100, 1, from, to, t.Id, 1, null) { ContractFen = value };

        // A proposal holds nothing; accepting it without the money fails whole and leaves it proposed.
        var broke = await s.CreateOfferAsync(Contract(1_000, 11_000, 5_000));
        Assert.Equal((Consents.Proposed, (string?)null), (broke.Consent, broke.ContractState));
        var refused = await Assert.ThrowsAsync<StoreConflictException>(() => s.AnswerContractAsync(broke.Id, t.Id, true, 500));
        Assert.Equal("insufficient_funds", refused.Code);
        Assert.Equal(Consents.Proposed, (await s.OffersAsync()).Single(o => o.Id == broke.Id).Consent);
        Assert.Equal(0, (await s.AccountAsync(Accounts.Tenant(t.Id)))?.PendingDebits ?? 0);
        Assert.Equal("not_found", (await Assert.ThrowsAsync<StoreConflictException>(() => s.AnswerContractAsync(broke.Id, t.Id + 1, true, 500))).Code);

        await s.TransferAsync([Posted("top", Accounts.Cash, Accounts.Tenant(t.Id), 10_000)], true, 1);
        Assert.Equal("window_started", (await Assert.ThrowsAsync<StoreConflictException>(() => s.AnswerContractAsync(broke.Id, t.Id, true, 1_000))).Code);
        Assert.Equal(Consents.Declined, (await s.AnswerContractAsync(broke.Id, t.Id, false, 900)).Consent);
        Assert.Equal("already_answered", (await Assert.ThrowsAsync<StoreConflictException>(() => s.AnswerContractAsync(broke.Id, null, true, 900))).Code);
        var full = await s.AnswerContractAsync((await s.CreateOfferAsync(Contract(1_000, 11_000, 6_000))).Id, t.Id, true, 500);
        var early = await s.AnswerContractAsync((await s.CreateOfferAsync(Contract(1_000, 11_000, 3_000))).Id, null, true, 500);
        Assert.Equal(("held", Consents.Accepted, 500L), (full.ContractState, full.Consent, full.AcceptedMs!.Value));
        Assert.Equal(9_000, (await s.AccountAsync(Accounts.Tenant(t.Id)))!.PendingDebits);
        Assert.Equal(0, await s.SettleContractsAsync(5_000, 500));

        // Ended by the provider at 40% of its window: the tenant pays 40%.
        await s.WithdrawOfferAsync(early.Id, p.Id, 5_000);
        Assert.Equal(1, await s.SettleContractsAsync(5_000, 500));
        var e = (await s.OffersAsync()).Single(o => o.Id == early.Id);
        Assert.Equal(("settled", 1_200L, 60L), (e.ContractState, e.ContractChargedFen!.Value, e.ContractFeeFen!.Value));

        // Ran its whole window: the full value, used or not.
        Assert.Equal(1, await s.SettleContractsAsync(11_000, 500));
        var f = (await s.OffersAsync()).Single(o => o.Id == full.Id);
        Assert.Equal(6_000, f.ContractChargedFen);
        var wallet = (await s.AccountAsync(Accounts.Tenant(t.Id)))!;
        Assert.Equal((10_000L - 7_200, 0L), (wallet.Posted, wallet.PendingDebits));
        Assert.Equal(7_200 - 60 - 300, (await s.AccountAsync(Accounts.Provider(p.Id)))!.Posted);
        Assert.Equal(0, await s.SettleContractsAsync(20_000, 500));
        var report = await s.VerifyAsync(500);
        Assert.True(report.Ok, string.Join("; ", report.Problems));
        Assert.Equal(2, report.SettlementsChecked);
    }

    [Fact]
    public async Task ACancelledToken_MovesNoMoney()
    {
        await using var s = Open();
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => s.TransferAsync([Posted("c1", Accounts.Cash, Accounts.Tenant(1), 500)], true, 1, cancelled.Token));
        Assert.Null(await s.AccountAsync(Accounts.Tenant(1)));
        Assert.True((await s.VerifyAsync(0)).Ok);
        Assert.Equal(0, (await s.VerifyAsync(0)).Transfers);
    }

    // Holds and settlements through the store's job transitions (what the control plane does at lease and at the end
    // of an attempt), with vouchers, related parties, domestic shares, expiry and faults in random order.
    private static long Subsidised;
    private static long Charged;

    [Fact]
    public void TheSequences_ReallyChargeAndSubsidise()
    {
        // The property above must not pass by refusing everything: over a fixed set of seeds it charges and subsidises.
        Interlocked.Exchange(ref Subsidised, 0);
        Interlocked.Exchange(ref Charged, 0);
        foreach (var seed in Enumerable.Range(1, 12))
        {
            var (ok, why) = RunSequence(seed * 7919);
            Assert.True(ok, why);
        }

        Assert.True(Interlocked.Read(ref Charged) > 10, $"only {Charged} charged attempts");
        Assert.True(Interlocked.Read(ref Subsidised) > 3, $"only {Subsidised} subsidised attempts");
    }

    [Property(MaxTest = 15)]
    public Property AnySettlementSequence_KeepsMoneyConserved_AndVerifiesClean(int seed)
    {
        var (ok, why) = RunSequence(seed);
        return ok.Label(why);
    }

    private (bool Ok, string Why) RunSequence(int seed)
    {
        var rng = new System.Random(seed);
        var store = Open();
        try
        {
            long now = 1_000_000;
            var research = store.CreateTenantAsync("lab", "research", 1, now).GetAwaiter().GetResult();
            var bank = store.CreateTenantAsync("bank", "finance", 1, now).GetAwaiter().GetResult();
            var p1 = store.CreateProviderAsync("p1", "r", now).GetAwaiter().GetResult();
            var p2 = store.CreateProviderAsync("p2", "r", now).GetAwaiter().GetResult();
            foreach (var p in new[] { p1, p2 })
            {
                store.RegisterAsync(p.Id, "r", [new GroupOffer("g", 8000, 16384, null, 0, 4, null)], now).GetAwaiter().GetResult(); // epoch 1
            }

            if (rng.Next(2) == 0)
            {
                store.AddRelationAsync(research.Id, p2.Id, "sister company", now).GetAwaiter().GetResult();
            }

            var programme = store.CreateProgrammeAsync(new ProgrammeRecord(0, "prog", "city", 50_000, 5000, 8000, 30_000, ["research"], 0, 10_000_000, now)).GetAwaiter().GetResult();
            var held = new List<(long Job, int Attempt, long Start)>();
            var failures = new List<string>();
            for (var step = 0; step < 30; step++)
            {
                now += rng.Next(1, 20_000);
                var tenant = rng.Next(2) == 0 ? research : bank;
                switch (rng.Next(6))
                {
                    case 0:
                        store.TransferAsync([new TransferRequest($"top{step}", TransferKinds.Posted, Accounts.Cash, Accounts.Tenant(tenant.Id), rng.Next(0, 50_000), "topup")], true, now).GetAwaiter().GetResult();
                        break;
                    case 1:
                        try
                        {
                            store.IssueVoucherAsync(programme.Id, research.Id, rng.Next(1, 8_000), now + rng.Next(1, 200_000), now).GetAwaiter().GetResult();
                        }
                        catch (StoreConflictException e) when (e.Code is "cap_exceeded" or "budget_exhausted")
                        {
                        }

                        break;
                    case 2:
                        store.ExpireVouchersAsync(now).GetAwaiter().GetResult();
                        break;
                    case 3 or 4:
                        var (job, _) = store.SubmitAsync(new NewJob(tenant.Id, "j", """{"name":"j"}""", 3, 1, now, null)).GetAwaiter().GetResult();
                        var provider = rng.Next(2) == 0 ? p1 : p2;
                        var price = rng.Next(0, 20_000);
                        var units = rng.Next(1, 2_000);
                        var limitMs = rng.Next(1, 3_600) * 1000L;
                        var plan = new HoldPlan(1, "on-demand", "core-hour", price, price - rng.Next(0, price / 10 + 1), units, Charging.Cost(price, units, limitMs), rng.Next(2) == 0);
                        try
                        {
                            var leased = store.ApplyAsync(new Transition(job.Id, [JobStates.Queued], JobStates.Leased, "lease") { Lease = (provider.Id, "g", 1, "{}"), Hold = plan, AtMs = now }).GetAwaiter().GetResult();
                            held.Add((leased.Id, leased.Attempt, now));
                        }
                        catch (StoreConflictException e) when (e.Code == "insufficient_funds")
                        {
                            // The lease and its hold are refused together: the job must still be queued.
                            if (store.GetJobAsync(job.Id).GetAwaiter().GetResult()!.State != JobStates.Queued)
                            {
                                failures.Add($"step {step}: a refused hold left job {job.Id} leased");
                            }
                        }

                        break;
                    default:
                        if (held.Count == 0)
                        {
                            break;
                        }

                        var (id, attempt, start) = held[rng.Next(held.Count)];
                        held.RemoveAll(h => h.Job == id);
                        var rec = store.GetJobAsync(id).GetAwaiter().GetResult()!;
                        var ran = rng.Next(0, 4_000_000);
                        var usage = new UsageRecord(id, attempt, rec.TenantId, rec.ProviderId!.Value, "g", null, 0, 0, 1000, 64, start, start + ran);
                        var fault = rng.Next(3) == 0;
                        store.ApplyAsync(new Transition(id, [JobStates.Leased], fault ? JobStates.Queued : JobStates.Succeeded, "end")
                        {
                            AtMs = now, Usage = usage, Requeue = fault, FeeBps = 500,
                            Settle = new SettlePlan(attempt, Void: fault, fault ? 0 : ran, "end"),
                        }).GetAwaiter().GetResult();
                        break;
                }

                var report = store.VerifyAsync(500).GetAwaiter().GetResult();
                if (!report.Ok)
                {
                    return (false, $"step {step}: " + string.Join("; ", report.Problems));
                }
            }

            // Money is conserved: the programme's budget is what it holds, what its vouchers hold and what they paid.
            var settlements = store.SettlementsAsync(new SettlementQuery()).GetAwaiter().GetResult();
            var inProgramme = store.AccountAsync(Accounts.Programme(programme.Id)).GetAwaiter().GetResult()!.Posted
                + store.VouchersAsync(null, programme.Id).GetAwaiter().GetResult().Sum(v => store.AccountAsync(Accounts.Voucher(v.Id)).GetAwaiter().GetResult()!.Posted)
                + settlements.Sum(s => s.VoucherFen ?? 0);
            var related = store.RelationsAsync().GetAwaiter().GetResult();
            var subsidisedRelated = settlements.Any(s => s.VoucherId is not null && related.Any(r => r.TenantId == s.TenantId && r.ProviderId == s.ProviderId));
            var subsidisedOutsideSector = settlements.Any(s => s.VoucherId is not null && s.TenantId == bank.Id);
            var overShare = settlements.Any(s => s.State == SettlementStates.Settled && s.VoucherFen > Money.Share(s.CostFen ?? 0, s.VoucherShareBps));
            Interlocked.Add(ref Subsidised, settlements.Count(s => s.VoucherFen > 0));
            Interlocked.Add(ref Charged, settlements.Count(s => s.State == SettlementStates.Settled && s.CostFen > 0));
            return inProgramme != 50_000 ? (false, $"programme money {inProgramme} != budget 50000")
                : subsidisedRelated ? (false, "a voucher paid between related parties")
                : subsidisedOutsideSector ? (false, "a voucher paid outside its sectors")
                : overShare ? (false, "a voucher paid more than its share")
                : (failures.Count == 0, string.Join("; ", failures));
        }
        finally
        {
            store.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        SqliteConnection.ClearAllPools();
        try
        {
            Directory.Delete(Dir, true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>The ledger compliance suite on SQLite files, and what only SQLite's adapter can be asked (triggers, the writer task).</summary>
public sealed class SqliteLedgerTests : LedgerCompliance<SqliteStore>
{
    protected override SqliteStore Open() => SqliteStore.Open(Path.Combine(Dir, Guid.NewGuid().ToString("N") + ".db"));

    [Fact]
    public async Task Journal_IsAppendOnly_AndVerifyCatchesTampering()
    {
        var path = Path.Combine(Dir, "tamper.db");
        await using (var s = SqliteStore.Open(path))
        {
            await s.TransferAsync([Posted("a", Accounts.Cash, Accounts.Tenant(1), 500), Hold("b", Accounts.Tenant(1), 200)], true, 1);
            Assert.True((await s.VerifyAsync(0)).Ok);
            using (var c = new SqliteConnection($"Data Source={path}"))
            {
                c.Open();
                using var cmd = c.CreateCommand();
                cmd.CommandText = "UPDATE ledger_transfers SET amount = 1 WHERE id = 'a'";
                var e = Assert.Throws<SqliteException>(() => cmd.ExecuteNonQuery());
                Assert.Contains("append-only", e.Message, StringComparison.Ordinal);
                cmd.CommandText = "DELETE FROM ledger_transfers";
                Assert.Throws<SqliteException>(() => cmd.ExecuteNonQuery());
                cmd.CommandText = "UPDATE ledger_accounts SET posted = posted + 1 WHERE id = 'tenant:1'";
                cmd.ExecuteNonQuery();
            }

            var report = await s.VerifyAsync(0);
            Assert.False(report.Ok);
            Assert.Contains(report.Problems, p => p.Contains("tenant:1", StringComparison.Ordinal) && p.Contains("differ from the journal", StringComparison.Ordinal));
            Assert.Contains(report.Problems, p => p.Contains("created or lost", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task AnOperationThatThrowsAnything_FailsAlone_AndTheWriterLivesOn()
    {
        await using var s = Open();
        var t = await s.CreateTenantAsync("before", "research", 1, 1);
        // Not one of the store's own exception types: before, this ended the writer task and every later write hung.
        var failed = s.Write<int>(c =>
        {
            using (var cmd = c.CreateCommand())
            {
                cmd.CommandText = "UPDATE tenants SET sector = 'half-done'";
                cmd.ExecuteNonQuery();
            }

            throw new NotSupportedException("a bug in one operation");
        });
        await Assert.ThrowsAsync<NotSupportedException>(() => failed.WaitAsync(TimeSpan.FromSeconds(10)));
        var after = await s.CreateTenantAsync("after", "research", 1, 2).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(["research", "research"], (await s.ListTenantsAsync()).Select(x => x.Sector));
        Assert.NotEqual(t.Id, after.Id);
    }
}
