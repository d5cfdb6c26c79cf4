using System.Net;
using System.Text.Json.Nodes;
using Suanli.Core.Market;

namespace Suanli.Server.Tests;

/// <summary>The trading centre end to end on a real server and its local provider: offers, escrow, settlement, vouchers, spot.</summary>
public class MarketTests
{
    private static async Task<long> LocalProvider(HttpClient admin) =>
        (await admin.Get("/api/v1/providers"))["items"]!.AsArray().Single(p => p!["name"]!.GetValue<string>() == "local")!["id"]!.GetValue<long>();

    private static async Task<int> LocalCores(HttpClient admin)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var p = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().Single(p => p!["name"]!.GetValue<string>() == "local")!;
            if (p["groups"]!.AsArray().Count > 0 || sw.Elapsed > TimeSpan.FromSeconds(30))
            {
                return (int)(p["groups"]![0]!["milliCpu"]!.GetValue<long>() / 1000);
            }

            await Task.Delay(100);
        }
    }

    private static async Task<JsonNode> Settlement(HttpClient admin, long job, int attempt = 1)
    {
        var rows = (await admin.Get($"/api/v1/settlements?job={job}")).AsArray();
        return rows.Single(r => r!["attempt"]!.GetValue<int>() == attempt)!;
    }

    private static long L(JsonNode? n) => n!.GetValue<long>();

    private static async Task<string> Explain(HttpClient c, long job) =>
        string.Join(" ", (await c.Get($"/api/v1/jobs/{job}/explain"))["lines"]!.AsArray().Select(l => l!.GetValue<string>()));

    [Fact]
    public async Task AnOfferPublishedUnderARunningJob_DoesNotSellItsNodeTwice()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        var cores = await LocalCores(admin);
        var (tId, tKey) = await admin.Tenant("first-come");
        await admin.Post($"/api/v1/wallets/{tId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        using var t = s.Client(tKey);
        var whole = new { cpu = cores, memoryMiB = 64 };
        var a = L((await t.Post("/api/v1/jobs", new { name = "holder", command = new[] { "sleep", "60" }, resources = whole, timeLimitSeconds = 120 }, HttpStatusCode.Created))["id"]);
        await t.WaitJob(a, j => j.State() == "running");

        // The provider now sells its only node; the job on it keeps it until it ends.
        await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 1, nodes = 1 }, HttpStatusCode.Created);
        var b = L((await t.Post("/api/v1/jobs", new { name = "buyer", command = new[] { "true" }, resources = whole, timeLimitSeconds = 60 }, HttpStatusCode.Created))["id"]);
        for (var i = 0; i < 20; i++)
        {
            await Task.Delay(150);
            Assert.Equal("queued", (await t.Get($"/api/v1/jobs/{b}")).State());
        }

        Assert.Equal("running", (await t.Get($"/api/v1/jobs/{a}")).State());
        await t.PostAsync($"/api/v1/jobs/{a}/cancel", null);
        var done = await t.WaitJob(b, j => j.State() is "succeeded" or "failed");
        Assert.Equal("succeeded", done.State());
        Assert.Equal(100, L((await Settlement(admin, b))["priceFen"])); // it ran on the offer, after the holder
    }

    [Fact]
    public async Task PricedJobs_HoldEscrow_SettleMeteredCost_AndApplyVouchersExceptBetweenRelatedParties()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        await LocalCores(admin);
        var (aId, aKey) = await admin.Tenant("edu-a");
        var (bId, bKey) = await admin.Tenant("edu-b");
        var offer = await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 3600, nodes = 1 }, HttpStatusCode.Created);
        Assert.Equal(360_000, L(offer["priceFen"]));
        Assert.True(offer["live"]!.GetValue<bool>());

        // Top-ups are idempotent by key.
        using (var req = new HttpRequestMessage(HttpMethod.Post, $"/api/v1/wallets/{aId}/topups") { Content = JsonContent.Create(new { amount = 100, reference = "bank-1" }) })
        {
            req.Headers.Add("Idempotency-Key", "a-1");
            Assert.Equal(10_000, L((await (await admin.SendAsync(req)).Json(HttpStatusCode.Created))["balanceFen"]));
        }

        using (var req = new HttpRequestMessage(HttpMethod.Post, $"/api/v1/wallets/{aId}/topups") { Content = JsonContent.Create(new { amount = 100, reference = "bank-1" }) })
        {
            req.Headers.Add("Idempotency-Key", "a-1");
            var replay = await (await admin.SendAsync(req)).Json(HttpStatusCode.OK);
            Assert.Equal("exists", replay["result"]!.GetValue<string>());
            Assert.Equal(10_000, L(replay["balanceFen"]));
        }

        await admin.Post($"/api/v1/wallets/{bId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        var validTo = DateTimeOffset.UtcNow.AddDays(1).ToString("O");
        var programme = await admin.Post("/api/v1/voucher-programmes",
            new { name = "research-2026", funder = "city-bureau", budget = 50, share = 0.5, tenantCap = 20, sectors = new[] { "research" }, validTo }, HttpStatusCode.Created);
        var pid = L(programme["id"]);
        await admin.Post($"/api/v1/voucher-programmes/{pid}/vouchers", new { tenantId = aId, amount = 10 }, HttpStatusCode.Created);
        await admin.Post($"/api/v1/voucher-programmes/{pid}/vouchers", new { tenantId = bId, amount = 10 }, HttpStatusCode.Created);
        await admin.Post("/api/v1/relations", new { tenantId = bId, providerId = local, note = "same parent company" }, HttpStatusCode.Created);

        using var a = s.Client(aKey);
        using var b = s.Client(bKey);
        var ja = L((await a.Post("/api/v1/jobs", Api.Job("priced-a", ["/bin/sh", "-c", "sleep 1.5"]), HttpStatusCode.Created))["id"]);
        var jb = L((await b.Post("/api/v1/jobs", Api.Job("priced-b", ["/bin/sh", "-c", "sleep 1.5"]), HttpStatusCode.Created))["id"]);
        await a.WaitJob(ja, j => j.State() == "running");
        var during = await a.Get($"/api/v1/wallets/{aId}");
        Assert.True(L(during["heldFen"]) > 0, during.ToJsonString());
        Assert.Contains((await a.Get($"/api/v1/jobs/{ja}/events"))["items"]!.AsArray(), e => e!["message"]!.GetValue<string>().Contains("held in escrow", StringComparison.Ordinal));
        await a.WaitJob(ja, j => j.State() == "succeeded");
        await b.WaitJob(jb, j => j.State() == "succeeded");

        var sa = await Settlement(admin, ja);
        var sb = await Settlement(admin, jb);
        foreach (var (st, job, tenant) in new[] { (sa, ja, a), (sb, jb, b) })
        {
            Assert.Equal("settled", st["state"]!.GetValue<string>());
            var units = L(st["unitsMilli"]);
            Assert.Equal(Charging.Cost(360_000, units, 60_000), L(st["holdFen"]));
            var usage = (await tenant.Get($"/api/v1/jobs/{job}/usage"))["items"]!.AsArray().Single()!;
            var metered = L(st["meteredMs"]);
            Assert.Equal(Charging.Cost(360_000, units, metered), L(st["costFen"]));
            Assert.True(metered >= 1000, $"metered {metered} ms");
            Assert.Equal(Money.Share(L(st["costFen"]), 500), L(st["feeFen"]));
            Assert.Equal(L(st["costFen"]), L(st["tenantFen"]) + L(st["voucherFen"]));
            Assert.Equal(L(st["costFen"]), L(st["providerFen"]) + L(st["feeFen"]));
            Assert.NotNull(usage);
        }

        Assert.Equal(L(sa["costFen"]) / 2, L(sa["voucherFen"]));
        Assert.True(L(sa["voucherFen"]) > 0);
        Assert.Equal(0, L(sb["voucherFen"])); // related parties: no voucher
        Assert.Null(sb["voucherId"]);

        var wa = await a.Get($"/api/v1/wallets/{aId}");
        Assert.Equal(10_000 - L(sa["tenantFen"]), L(wa["balanceFen"]));
        Assert.Equal(0, L(wa["heldFen"]));
        Assert.Equal(1_000 - L(sa["voucherFen"]), L(wa["vouchers"]![0]!["availableFen"]));
        var accounts = (await admin.Get("/api/v1/ledger/accounts")).AsArray().ToDictionary(x => x!["id"]!.GetValue<string>(), x => x!);
        Assert.Equal(L(sa["providerFen"]) + L(sb["providerFen"]), L(accounts[$"provider:{local}"]["posted"]));
        Assert.Equal(L(sa["feeFen"]) + L(sb["feeFen"]), L(accounts["platform:fee"]["posted"]));
        Assert.Equal(0, L(accounts["platform:escrow"]["posted"]));

        var verify = await admin.Get("/api/v1/ledger/verify");
        Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
        Assert.Equal(0, L(verify["sumPosted"]));
        Assert.Equal(2, verify["settlementsChecked"]!.GetValue<int>());

        // Write-off report: the subsidised attempt with its metered evidence.
        var writeoff = (await admin.Get($"/api/v1/voucher-programmes/{pid}/writeoff")).AsArray();
        var row = Assert.Single(writeoff)!;
        Assert.Equal(ja, L(row["jobId"]));
        Assert.Equal(L(sa["voucherFen"]), L(row["subsidyFen"]));
        Assert.True(row["coreHours"]!.GetValue<decimal>() > 0);
        var csv = await admin.GetStringAsync($"/api/v1/voucher-programmes/{pid}/writeoff?format=csv");
        Assert.Equal(2, csv.Trim().Split('\n').Length);
        Assert.StartsWith("JobId,Attempt,TenantId", csv, StringComparison.Ordinal);

        // Statements.
        var month = DateTimeOffset.UtcNow.ToString("yyyy-MM", System.Globalization.CultureInfo.InvariantCulture);
        var invoice = await a.Get($"/api/v1/statements/tenants/{aId}?month={month}");
        Assert.Equal(10_000, L(invoice["topUpsFen"]));
        Assert.Equal(0, L(invoice["openingFen"]));
        Assert.Equal(L(sa["costFen"]), L(invoice["chargedFen"]));
        Assert.Equal(L(sa["voucherFen"]), L(invoice["voucherFen"]));
        Assert.Equal(10_000 - L(sa["tenantFen"]), L(invoice["closingFen"]));
        Assert.Single(invoice["lines"]!.AsArray());
        var invoiceCsv = await a.GetStringAsync($"/api/v1/statements/tenants/{aId}?month={month}&format=csv");
        Assert.Contains($",{ja},1,local,on-demand,core-hour,", invoiceCsv, StringComparison.Ordinal);
        var payout = await admin.Get($"/api/v1/statements/providers/{local}?month={month}");
        Assert.Equal(2, payout["lines"]!.AsArray().Count);
        Assert.Equal(L(sa["providerFen"]) + L(sb["providerFen"]), L(payout["earnedFen"]));
        await admin.Post($"/api/v1/providers/{local}/payouts", new { amount = Money.Yuan(L(payout["earnedFen"])) }, HttpStatusCode.Created);
        Assert.Equal(0, L((await admin.Get("/api/v1/ledger/accounts?prefix=provider:")).AsArray().Single()!["posted"]));
        var summary = await admin.Get("/api/v1/market/summary");
        Assert.Equal(2, summary["volume"]![0]!["settlements"]!.GetValue<int>());
        Assert.Equal(L(sa["voucherFen"]), L(summary["subsidyFen"]));
        Assert.Equal(L(sa["voucherFen"]), L(summary["subsidyByProgramme"]!["research-2026"]));

        // Other tenants' money is not visible.
        Assert.Equal(HttpStatusCode.NotFound, (await a.GetAsync($"/api/v1/wallets/{bId}")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await a.GetAsync($"/api/v1/ledger/transfers?account=tenant:{bId}")).StatusCode);
        Assert.All((await a.Get("/api/v1/settlements")).AsArray(), x => Assert.Equal(aId, L(x!["tenantId"])));
        Assert.True((await admin.Get("/api/v1/ledger/verify"))["ok"]!.GetValue<bool>());
    }

    [Fact]
    public async Task UnfundedJob_WaitsWithTheReason_AndRunsOnceTheWalletIsToppedUp_WithinItsBudget()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        await LocalCores(admin);
        var (cId, cKey) = await admin.Tenant("broke");
        await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 36, nodes = 1 }, HttpStatusCode.Created);
        using var c = s.Client(cKey);
        var job = L((await c.Post("/api/v1/jobs", Api.Job("needs-money", ["true"]), HttpStatusCode.Created))["id"]);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        string why;
        do
        {
            await Task.Delay(200);
            why = await Explain(c, job);
        }
        while (!why.Contains("waiting for funds", StringComparison.Ordinal) && sw.Elapsed < TimeSpan.FromSeconds(20));
        Assert.Contains("waiting for funds", why, StringComparison.Ordinal);
        Assert.Contains($"tenant {cId} can put up 0.00", why, StringComparison.Ordinal);
        Assert.Equal("queued", (await c.Get($"/api/v1/jobs/{job}")).State());

        // The scheduler knew the wallet could not cover the hold: the store was never asked for it (no refused lease).
        using var anon = new HttpClient { BaseAddress = new Uri(s.Url) };
        static long Unfunded(string metrics) => long.Parse(metrics.Split('\n').Single(l => l.StartsWith("suanli_leases_unfunded_total ", StringComparison.Ordinal)).Split(' ')[1],
            System.Globalization.CultureInfo.InvariantCulture);
        var (otherId, _) = await admin.Tenant("rich");
        await admin.Post($"/api/v1/wallets/{otherId}/topups", new { amount = 5 }, HttpStatusCode.Created);
        await Task.Delay(1000);
        Assert.Equal("queued", (await c.Get($"/api/v1/jobs/{job}")).State());
        Assert.Equal(0, Unfunded(await anon.GetStringAsync("/metrics")));

        // A budget below the estimate keeps a job off the priced capacity, and explain names the filter.
        var capped = L((await c.Post("/api/v1/jobs", new { name = "cheap", command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60, budget = 0.01 }, HttpStatusCode.Created))["id"]);
        await admin.Post($"/api/v1/wallets/{cId}/topups", new { amount = "1.00" }, HttpStatusCode.Created);
        await c.WaitJob(job, j => j.State() == "succeeded");
        await Task.Delay(500);
        var explain = await Explain(c, capped);
        Assert.Contains("budget", explain, StringComparison.Ordinal);
        Assert.Equal("queued", (await c.Get($"/api/v1/jobs/{capped}")).State());
        Assert.True((await admin.Get("/api/v1/ledger/verify"))["ok"]!.GetValue<bool>());
    }

    [Fact]
    public async Task OutbidSpotJob_GetsSignalAndNoticeFile_ThenIsPreemptedAndRequeued_WhileTheWinnerRuns()
    {
        using var s = new ServerProcess(lostAfterSeconds: 6, extraArgs: ["--spot-notice", "3", "--auction-interval", "3600"]);
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        var cores = await LocalCores(admin);
        var (xId, xKey) = await admin.Tenant("spot-x");
        var (yId, yKey) = await admin.Tenant("spot-y");
        await admin.Post($"/api/v1/wallets/{xId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        await admin.Post($"/api/v1/wallets/{yId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "interruptible", unit = "core-hour", price = 0.01, nodes = 1 }, HttpStatusCode.Created);

        // The loop clears the market as soon as it has one (an empty round, asks only); the next round is an hour away.
        // Before this wait the spot job below could be submitted before that first round and win it (a flaky failure).
        var firstRound = System.Diagnostics.Stopwatch.StartNew();
        while ((await admin.Get("/api/v1/market/rounds")).AsArray().Count == 0 && firstRound.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(50);
        }

        using var x = s.Client(xKey);
        using var y = s.Client(yKey);
        var script = "trap 'echo notice $SUANLI_TIER $SUANLI_PREEMPT_NOTICE_SECONDS $(head -n 1 \"$SUANLI_PREEMPT_FILE\")' USR1; echo started; while :; do sleep 0.2; done";
        var jx = L((await x.Post("/api/v1/jobs", new { name = "spot-x", command = new[] { "/bin/sh", "-c", script }, resources = new { cpu = 1, memoryMiB = 64 }, timeLimitSeconds = 300, tier = "interruptible", maxPrice = 0.05 }, HttpStatusCode.Created))["id"]);
        await Task.Delay(300);
        var explain = await Explain(x, jx);
        Assert.Contains("spot auction", explain, StringComparison.Ordinal);

        var round = (await admin.Post("/api/v1/market/clear", new { })).AsArray().Single()!;
        Assert.Equal("core-hour:cpu", round["instrument"]!.GetValue<string>());
        Assert.Equal(1, L(round["volume"]));
        Assert.Equal(1, L(round["buyerPriceFen"])); // the first losing lot is the provider's next, at its 1 fen reserve
        await x.WaitJob(jx, j => j.State() == "running");

        // A richer bidder wants every core: x is outbid.
        var jy = L((await y.Post("/api/v1/jobs", new { name = "spot-y", command = new[] { "sleep", "30" }, resources = new { cpu = cores, memoryMiB = 64 }, timeLimitSeconds = 300, tier = "interruptible", maxPrice = 1 }, HttpStatusCode.Created))["id"]);
        var book = (await y.Get("/api/v1/market/book")).AsArray().Single()!;
        Assert.Equal(2, book["bids"]!.AsArray().Count);
        round = (await admin.Post("/api/v1/market/clear", new { })).AsArray().Single()!;
        Assert.Equal(cores, L(round["volume"]));
        Assert.Equal(5, L(round["buyerPriceFen"])); // set by the first losing bid (x at 5 fen): y pays 5, not its 100

        // The notice reaches the job as SIGUSR1 with the notice file and the variables, then it is preempted and requeued.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        string logs;
        do
        {
            await Task.Delay(200);
            logs = string.Concat((await x.Get($"/api/v1/jobs/{jx}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
        }
        while (!logs.Contains("notice", StringComparison.Ordinal) && sw.Elapsed < TimeSpan.FromSeconds(20));
        Assert.Matches(@"notice interruptible 3 [1-3]\n", logs);
        var requeued = await x.WaitJob(jx, j => j.State() == "queued" && j["attempt"]!.GetValue<int>() == 2, 30);
        Assert.Equal(2, requeued["maxAttempts"]!.GetValue<int>()); // a preemption does not use up a retry
        Assert.Contains((await x.Get($"/api/v1/jobs/{jx}/events"))["items"]!.AsArray(), e => e!["message"]!.GetValue<string>().Contains("preempted after notice", StringComparison.Ordinal));
        await y.WaitJob(jy, j => j.State() == "running", 30);

        var first = await Settlement(admin, jx);
        Assert.Equal("settled", first["state"]!.GetValue<string>()); // warned in time: the run is charged
        Assert.Equal(1, L(first["priceFen"]));
        var wy = await Settlement(admin, jy);
        Assert.Equal(5, L(wy["priceFen"]));
        Assert.Equal("held", wy["state"]!.GetValue<string>());
        var why = await Explain(x, jx);
        Assert.Contains("outbid", why, StringComparison.Ordinal);
        var rounds = (await x.Get("/api/v1/market/rounds")).AsArray();
        Assert.True(rounds.Count >= 2);
        using (var anon = new HttpClient { BaseAddress = new Uri(s.Url) })
        {
            var metrics = await anon.GetStringAsync("/metrics");
            Assert.Contains("suanli_spot_clearing_price_fen{instrument=\"core-hour:cpu\",side=\"buyer\"} 5", metrics, StringComparison.Ordinal);
            Assert.Contains("suanli_spot_preemptions_total 1", metrics, StringComparison.Ordinal);
            Assert.Contains("suanli_escrow_holds_total{tier=\"interruptible\"}", metrics, StringComparison.Ordinal);
        }

        await y.PostAsync($"/api/v1/jobs/{jy}/cancel", null);
        await x.PostAsync($"/api/v1/jobs/{jx}/cancel", null);
        await y.WaitJob(jy, j => j.State() == "cancelled");
        sw.Restart();
        while ((await Settlement(admin, jy))["state"]!.GetValue<string>() == "held" && sw.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(200);
        }

        var verify = await admin.Get("/api/v1/ledger/verify");
        Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
        Assert.Equal(0, verify["openHolds"]!.GetValue<int>());
    }

    [Fact]
    public async Task PricePlacement_TakesTheCheapestLiveOffer_AndFollowsOffersAsTheyChange()
    {
        using var s = new ServerProcess(extraArgs: ["--placement", "price"]);
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        await LocalCores(admin);
        var (tId, tKey) = await admin.Tenant("shopper");
        var (cheapId, cheapKey) = await admin.Provider("cheap-site");
        var output = new System.Text.StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", cheapKey, "--cpu", "2", "--memory-mib", "1024", "--work-dir", s.DataDir + "-cheap");
        try
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while ((await admin.Get("/api/v1/providers"))["items"]!.AsArray().Single(p => p!["id"]!.GetValue<long>() == cheapId)!["groups"]!.AsArray().Count == 0 && sw.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            await admin.Post($"/api/v1/wallets/{tId}/topups", new { amount = 1000 }, HttpStatusCode.Created);
            await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 10, nodes = 1 }, HttpStatusCode.Created);
            var cheap = await admin.Post("/api/v1/offers", new { providerId = cheapId, group = "local", tier = "on-demand", unit = "core-hour", price = 4, nodes = 1 }, HttpStatusCode.Created);
            using var t = s.Client(tKey);
            var quote = (await t.Post("/api/v1/market/quote", Api.Job("buy-1", ["true"]))).AsArray();
            Assert.Equal(["cheap-site", "local"], quote.Select(q => q!["provider"]!.GetValue<string>()));
            Assert.Equal([400L, 1000L], quote.Select(q => L(q!["priceFen"])));
            Assert.Equal(Charging.Cost(400, L(quote[0]!["unitsMilli"]), 60_000), L(quote[0]!["estimatedFen"]));
            Assert.True(quote[0]!["fitsNow"]!.GetValue<bool>());
            var first = L((await t.Post("/api/v1/jobs", Api.Job("buy-1", ["true"]), HttpStatusCode.Created))["id"]);
            var done = await t.WaitJob(first, j => j.State() == "succeeded");
            Assert.Equal(cheapId, L(done["providerId"]));
            Assert.Equal(400, L((await Settlement(admin, first))["priceFen"]));

            // The cheap offer is withdrawn: a job for the local site now pays that site's live offer.
            await admin.DeleteAsync($"/api/v1/offers/{L(cheap["id"])}");
            var second = L((await t.Post("/api/v1/jobs", new { name = "buy-2", command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60,
                constraints = new { providers = new[] { "local" } } }, HttpStatusCode.Created))["id"]);
            await t.WaitJob(second, j => j.State() == "succeeded");
            Assert.Equal(1000, L((await Settlement(admin, second))["priceFen"]));
            Assert.True((await admin.Get("/api/v1/ledger/verify"))["ok"]!.GetValue<bool>());
        }
        finally
        {
            agent.Kill(true);
        }
    }

    [Fact]
    public async Task ReservedContract_IsTheTenantsAlone_UsedAtNoExtraCharge_AndPaidInFullAtTheWindowsEnd()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        var cores = await LocalCores(admin);
        var (ownerId, ownerKey) = await admin.Tenant("contract-owner");
        var (_, otherKey) = await admin.Tenant("someone-else");
        await admin.Post($"/api/v1/wallets/{ownerId}/topups", new { amount = 1000 }, HttpStatusCode.Created);
        var from = DateTimeOffset.UtcNow.AddSeconds(2);
        var to = from.AddSeconds(6);
        var proposal = await admin.Post("/api/v1/offers", new { providerId = local, group = "local", tier = "reserved", unit = "core-hour", price = 360, nodes = 1,
            tenantId = ownerId, validFrom = from.ToString("O"), validTo = to.ToString("O") }, HttpStatusCode.Created);
        Assert.Equal(0, L((await admin.Get($"/api/v1/wallets/{ownerId}"))["heldFen"]));
        using var owner = s.Client(ownerKey);
        var contract = await (await owner.PostAsync($"/api/v1/offers/{proposal["id"]}/accept", null)).Json(HttpStatusCode.OK);
        var value = L(contract["contractFen"]);
        Assert.Equal(Charging.Cost(36_000, cores * 1000L, 6_000), value); // 360 CNY per core-hour, every core, 6 s
        Assert.Equal("held", contract["contractState"]!.GetValue<string>());
        Assert.Equal(value, L((await admin.Get($"/api/v1/wallets/{ownerId}"))["heldFen"]));
        while (DateTimeOffset.UtcNow < from)
        {
            await Task.Delay(100);
        }

        using var other = s.Client(otherKey);
        var mine = L((await owner.Post("/api/v1/jobs", new { name = "mine", command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60, tier = "reserved" }, HttpStatusCode.Created))["id"]);
        var theirs = L((await other.Post("/api/v1/jobs", new { name = "theirs", command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60, tier = "reserved" }, HttpStatusCode.Created))["id"]);
        await owner.WaitJob(mine, j => j.State() == "succeeded");
        Assert.Equal(0, L((await Settlement(admin, mine))["costFen"]));
        var explain = await Explain(other, theirs);
        Assert.Contains($"reserved for tenant {ownerId}", explain, StringComparison.Ordinal);

        // After the window the contract settles by itself: the whole value, used or not.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        JsonNode offer;
        do
        {
            await Task.Delay(250);
            offer = (await admin.Get("/api/v1/offers"))["items"]!.AsArray().Single(o => L(o!["id"]) == L(contract["id"]))!;
        }
        while (offer["contractState"]!.GetValue<string>() != "settled" && sw.Elapsed < TimeSpan.FromSeconds(20));
        Assert.Equal(value, L(offer["contractChargedFen"]));
        var wallet = await admin.Get($"/api/v1/wallets/{ownerId}");
        Assert.Equal((100_000 - value, 0L), (L(wallet["balanceFen"]), L(wallet["heldFen"])));
        var provider = (await admin.Get("/api/v1/ledger/accounts?prefix=provider:")).AsArray().Single()!;
        Assert.Equal(value - Money.Share(value, 500), L(provider["posted"]));
        var month = to.ToString("yyyy-MM", System.Globalization.CultureInfo.InvariantCulture);
        var invoice = await owner.Get($"/api/v1/statements/tenants/{ownerId}?month={month}");
        Assert.Equal(value, L(invoice["contractsFen"]));
        Assert.Equal(L(contract["id"]), L(invoice["contracts"]![0]!["offerId"]));
        var payout = await admin.Get($"/api/v1/statements/providers/{local}?month={month}");
        Assert.Equal(value - Money.Share(value, 500), L(payout["contractsNetFen"]));
        Assert.Equal(value, L((await admin.Get("/api/v1/market/summary"))["contractsChargedFen"]));
        var verify = await admin.Get("/api/v1/ledger/verify");
        Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
        await other.PostAsync($"/api/v1/jobs/{theirs}/cancel", null);
    }

    [Fact]
    public async Task BadMarketInput_IsRefusedNamingFieldAndRule_AndChangesNothing()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = await LocalProvider(admin);
        await LocalCores(admin);
        var (tId, tKey) = await admin.Tenant("careful");

        async Task Refused(HttpResponseMessage r, HttpStatusCode status, string field, string? rule = null)
        {
            var body = await r.Json(status);
            var text = body.ToJsonString();
            Assert.Contains(field, text, StringComparison.Ordinal);
            if (rule is not null)
            {
                Assert.Contains(rule, text, StringComparison.Ordinal);
            }
        }

        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = -1, nodes = 1 }), HttpStatusCode.BadRequest, "price", "range");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "gpu-minute", price = 1, nodes = 1 }), HttpStatusCode.BadRequest, "unit", "enum");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "card-hour", price = 1, nodes = 1 }), HttpStatusCode.BadRequest, "unit", "hardware");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "spot", unit = "core-hour", price = 1, nodes = 1 }), HttpStatusCode.BadRequest, "tier", "enum");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "reserved", unit = "core-hour", price = 1, nodes = 1 }), HttpStatusCode.BadRequest, "tenantId", "required");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 1.001, nodes = 1 }), HttpStatusCode.BadRequest, "price", "precision");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "nope", tier = "on-demand", unit = "core-hour", price = 1, nodes = 1 }), HttpStatusCode.Conflict, "group");
        await Refused(await admin.PostAsJsonAsync("/api/v1/offers", new { providerId = local, group = "local", tier = "on-demand", unit = "core-hour", price = 1, nodes = 2 }), HttpStatusCode.Conflict, "nodes");
        Assert.Empty((await admin.Get("/api/v1/offers"))["items"]!.AsArray());

        await Refused(await admin.PostAsJsonAsync($"/api/v1/wallets/{tId}/topups", new { amount = -5 }), HttpStatusCode.BadRequest, "amount", "range");
        await Refused(await admin.PostAsJsonAsync($"/api/v1/wallets/{tId}/topups", new { amount = 5, bank = "x" }), HttpStatusCode.BadRequest, "bank", "unknown");
        await Refused(await admin.PostAsJsonAsync($"/api/v1/providers/{local}/payouts", new { amount = 5 }), HttpStatusCode.Conflict, "amount", "insufficient_funds");

        var past = DateTimeOffset.UtcNow.AddDays(-1).ToString("O");
        var future = DateTimeOffset.UtcNow.AddDays(1).ToString("O");
        await Refused(await admin.PostAsJsonAsync("/api/v1/voucher-programmes", new { name = "p", funder = "city", budget = 10, share = 1.5, tenantCap = 5, validTo = future }), HttpStatusCode.BadRequest, "share", "range");
        await Refused(await admin.PostAsJsonAsync("/api/v1/voucher-programmes", new { name = "p", funder = "city", budget = 10, share = 0.5, tenantCap = 50, validTo = future }), HttpStatusCode.BadRequest, "tenantCap", "range");
        var p = await admin.Post("/api/v1/voucher-programmes", new { name = "p", funder = "city", budget = 10, share = 0.5, tenantCap = 5, validTo = future }, HttpStatusCode.Created);
        await Refused(await admin.PostAsJsonAsync($"/api/v1/voucher-programmes/{L(p["id"])}/vouchers", new { tenantId = tId, amount = 1, validTo = past }), HttpStatusCode.Conflict, "validTo");
        await Refused(await admin.PostAsJsonAsync($"/api/v1/voucher-programmes/{L(p["id"])}/vouchers", new { tenantId = tId, amount = 6 }), HttpStatusCode.Conflict, "cap");
        Assert.Empty(await admin.Get($"/api/v1/vouchers?tenant={tId}") is JsonArray v ? v : []);

        using var t = s.Client(tKey);
        await Refused(await t.PostAsJsonAsync("/api/v1/jobs", new { name = "x", command = new[] { "true" }, resources = new { cpu = 1, memoryMiB = 64 }, timeLimitSeconds = 60, tier = "interruptible" }), HttpStatusCode.BadRequest, "maxPrice", "required");
        await Refused(await t.PostAsJsonAsync("/api/v1/jobs", new { name = "x", command = new[] { "true" }, resources = new { cpu = 1, memoryMiB = 64 }, timeLimitSeconds = 60, tier = "gold" }), HttpStatusCode.BadRequest, "tier", "enum");
        await Refused(await t.PostAsJsonAsync("/api/v1/jobs", new { name = "x", command = new[] { "true" }, resources = new { cpu = 1, memoryMiB = 64 }, timeLimitSeconds = 60, maxPrice = 1 }), HttpStatusCode.BadRequest, "maxPrice", "tier");
        Assert.Empty((await t.Get("/api/v1/jobs"))["items"]!.AsArray());

        var verify = await admin.Get("/api/v1/ledger/verify");
        Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
        Assert.Equal(0, (await admin.Get($"/api/v1/wallets/{tId}"))["balanceFen"]!.GetValue<long>());
    }
}
