using System.Globalization;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Server.Storage;
using Suanli.Simulation.Engine;
using Suanli.Simulation.Traces;

namespace Suanli.Server.Tests;

/// <summary>
/// The core decides, the server carries out: an SWF slice with dependencies (field 17) and tenants on limited budgets
/// replayed through the live control plane (real SQLite store and ledger, virtual clock, a simulated backend that reports
/// each job's run) and through the simulator gives the same decision for every job: the same start second, or never.
/// </summary>
public sealed class LiveReplayTests : IDisposable
{
    private const long T0 = 1_800_000_000; // the virtual clock's start, in seconds
    private const long PriceFen = 100;      // on-demand, per core-hour
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "suanli-replay-" + Guid.NewGuid().ToString("N")[..10]);

    public LiveReplayTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>A small synthetic SWF log: 4 nodes of 4 processors, three users, every fifth job follows an earlier one.</summary>
    private static string SwfSlice(int seed, int jobs)
    {
        var rng = new Random(seed);
        var sb = new StringBuilder("; MaxNodes: 4\n; MaxProcs: 16\n");
        long submit = 0;
        for (var id = 1; id <= jobs; id++)
        {
            submit += rng.Next(0, 40);
            var run = rng.Next(5, 300);
            var requested = run + rng.Next(0, 300);
            var procs = rng.Next(1, 17);
            var user = rng.Next(1, 4);
            var preceding = id > 3 && id % 5 == 0 ? rng.Next(1, id) : -1;
            sb.Append(CultureInfo.InvariantCulture, $"{id} {submit} 0 {run} {procs} -1 -1 {procs} {requested} -1 1 {user} 1 -1 1 -1 {preceding} 0\n");
        }

        return sb.ToString();
    }

    [Theory]
    [InlineData(11)]
    [InlineData(29)]
    public async Task AnSwfSliceWithDependenciesAndBudgets_IsDecidedTheSameLiveAndSimulated(int seed)
    {
        var path = Path.Combine(_dir, "slice.swf");
        await File.WriteAllTextAsync(path, SwfSlice(seed, 60));
        var trace = SwfReader.Read(path, dependencies: true);
        Assert.Equal(60, trace.Jobs.Count);
        Assert.Contains(trace.Jobs, j => j.Spec.After.Count > 0);

        // ---- live: the control plane over a real store, driven on a virtual clock ----
        var clock = new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(T0));
        long NowMs() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        await using var store = SqliteStore.Open(Path.Combine(_dir, "suanli.db"));
        var options = new ControlPlaneOptions();
        var cp = new ControlPlane(store, store, clock, new ServerMetrics(), options, NullLogger<ControlPlane>.Instance);
        await cp.RecoverAsync();
        var budgets = new Dictionary<string, long>(StringComparer.Ordinal); // SWF user → fen
        var tenantOf = new Dictionary<string, long>(StringComparer.Ordinal);
        long[] fen = [100_000, 400, 150];
        for (var u = 1; u <= 3; u++)
        {
            var t = await store.CreateTenantAsync($"u{u}", "research", 1, NowMs());
            cp.TenantCreated(t);
            tenantOf["u" + u] = t.Id;
            budgets[t.Id.ToString(CultureInfo.InvariantCulture)] = fen[u - 1];
            await store.TransferAsync([new TransferRequest($"topup-{u}", TransferKinds.Posted, Accounts.Cash, Accounts.Tenant(t.Id), fen[u - 1], "topup")], false, NowMs());
            cp.MoneyMoved(t.Id);
        }

        var p = await store.CreateProviderAsync("p", "r", NowMs());
        cp.ProviderCreated(p);
        var reg = await cp.RegisterAsync(p.Id, "r", [new GroupOffer("g", 4000, 16384, null, 0, 4, null)]);
        await store.CreateOfferAsync(new OfferRecord(0, p.Id, "g", Tiers.OnDemand, PriceUnits.CoreHour, PriceFen, 4, NowMs(), NowMs() + (30L * 86_400_000), null, NowMs(), null));
        cp.OffersChanged(await store.OffersAsync());

        var arrivals = trace.Jobs.OrderBy(j => j.Spec.SubmitTime).ThenBy(j => j.Spec.Id).ToList();
        var run = trace.Jobs.ToDictionary(j => j.Spec.Id, j => j.RunSeconds);
        var ends = new SortedSet<(long End, long Id)>();
        var liveStart = new Dictionary<long, long>();
        var next = 0;
        while (next < arrivals.Count || ends.Count > 0)
        {
            var now = Math.Min(next < arrivals.Count ? arrivals[next].Spec.SubmitTime : long.MaxValue, ends.Count > 0 ? ends.Min.End : long.MaxValue);
            clock.SetUtcNow(DateTimeOffset.FromUnixTimeSeconds(T0 + now));
            while (ends.Count > 0 && ends.Min.End == now)
            {
                var (_, id) = ends.Min;
                ends.Remove(ends.Min);
                await cp.ReportAsync(p.Id, reg.Epoch, id, JobStates.Succeeded, 0, "exit 0", observedMs: NowMs());
            }

            while (next < arrivals.Count && arrivals[next].Spec.SubmitTime == now)
            {
                var spec = arrivals[next++].Spec;
                var deps = spec.After.Count == 0 ? "" : $", \"dependencies\": [{string.Join(", ", spec.After.Select(d => $"\"{d.KindName}:{d.JobId}\""))}]";
                var doc = JobDocument.Parse(
                    $$"""{"name":"j{{spec.Id}}","command":["true"],"tasks":{{spec.Tasks}},"resources":{"cpu":4,"memoryMiB":64},"timeLimitSeconds":{{spec.RequestedSeconds}}{{deps}}}""",
                    cp.Catalogue);
                var (job, _) = await cp.SubmitAsync(tenantOf[spec.Tenant], doc, null);
                Assert.Equal(spec.Id, job.Id); // the store numbers jobs in submission order, as the log does
            }

            await cp.CycleAsync();
            foreach (var j in trace.Jobs.Where(j => !liveStart.ContainsKey(j.Spec.Id)))
            {
                if ((await store.GetJobAsync(j.Spec.Id))?.State == JobStates.Leased)
                {
                    await cp.ReportAsync(p.Id, reg.Epoch, j.Spec.Id, JobStates.Running, null, "started", observedMs: NowMs());
                    liveStart[j.Spec.Id] = now;
                    ends.Add((now + run[j.Spec.Id], j.Spec.Id));
                }
            }
        }

        // ---- simulated: the same jobs (tenants and memory as the live documents give them), pool and wallets ----
        var pool = new Pool([new Provider("p", "r", "p")],
            [new NodeGroup("p/g#offer1", "p", new NodeShape(4000, 16384), 4, PriceFen * 4 / 100m, new MarketTerms(Tiers.OnDemand, null, 1, PriceFen, 4))]);
        var jobs = trace.Jobs.Select(j => j with
        {
            Spec = j.Spec with
            {
                Tenant = tenantOf[j.Spec.Tenant].ToString(CultureInfo.InvariantCulture),
                Task = j.Spec.Task with { MemoryMiB = 64 },
                SubmitTime = T0 + j.Spec.SubmitTime,
            },
        }).ToList();
        var policy = PolicyRegistry.Build(options.Policy, pool, options.Placement, options.Backfill);
        var sim = new Simulator(pool, policy, funds: budgets).Run(jobs);
        var simStart = sim.Jobs.ToDictionary(o => o.Id, o => o.Start - T0);

        var differences = trace.Jobs.Select(j => j.Spec.Id)
            .Where(id => simStart.GetValueOrDefault(id, -1) != liveStart.GetValueOrDefault(id, -1))
            .Select(id => $"job {id}: simulated {simStart.GetValueOrDefault(id, -1)}, live {liveStart.GetValueOrDefault(id, -1)}")
            .ToList();
        Assert.True(differences.Count == 0, string.Join("\n", differences));

        // Budgets bite in this slice (a tenant's last jobs never get the money), dependencies delay jobs, most run.
        Assert.Contains(sim.Skipped, s => s.Reason == "never started");
        Assert.Contains(trace.Jobs, j => j.Spec.After.Count > 0 && liveStart.TryGetValue(j.Spec.Id, out var s) && s > j.Spec.SubmitTime
            && j.Spec.After.All(d => liveStart.TryGetValue(d.JobId, out var ds) && s == ds + run[d.JobId]));
        Assert.True(liveStart.Count >= 20, $"only {liveStart.Count} jobs started");

        // The live ledger agrees with the simulator's wallets: what each tenant was charged is the same.
        foreach (var (tenant, start) in budgets)
        {
            var account = await store.AccountAsync(Accounts.Tenant(long.Parse(tenant, CultureInfo.InvariantCulture)));
            var charged = jobs.Where(j => j.Spec.Tenant == tenant && simStart.ContainsKey(j.Spec.Id))
                .Sum(j => Math.Min(Escrow.CostFen(j.Spec, pool.Groups[0], j.RunSeconds * 1000), Escrow.HoldFen(j.Spec, pool.Groups[0])));
            Assert.Equal(start - charged, account!.Posted);
        }

        Assert.Empty((await store.VerifyAsync(options.FeeBps)).Problems);
    }
}
