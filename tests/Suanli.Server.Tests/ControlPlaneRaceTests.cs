using Microsoft.Extensions.Logging.Abstractions;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>The control plane in-process over a real SQLite file, with the races of issue 13 made deterministic.</summary>
public sealed class ControlPlaneRaceTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "suanli-cp-" + Guid.NewGuid().ToString("N")[..10]);

    public ControlPlaneRaceTests() => Directory.CreateDirectory(_dir);

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

    [Fact]
    public async Task ACancel_ThatWinsTheRaceAgainstTheFinalReport_StillMetersTheAttempt()
    {
        await using var store = SqliteStore.Open(Path.Combine(_dir, "suanli.db"));
        var cp = new ControlPlane(store, store, TimeProvider.System, new ServerMetrics(), new ControlPlaneOptions(), NullLogger<ControlPlane>.Instance);
        await cp.RecoverAsync();
        var t = await store.CreateTenantAsync("a", "research", 1, 1);
        cp.TenantCreated(t);
        var p = await store.CreateProviderAsync("p", "r", 1);
        cp.ProviderCreated(p);
        var reg = await cp.RegisterAsync(p.Id, "r", [new GroupOffer("g", 4000, 8192, null, 0, 1, null)]);
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", cp.Catalogue);
        var (job, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(job.Id))!.State);
        await cp.ReportAsync(p.Id, reg.Epoch, job.Id, JobStates.Running, null, "started");
        await Task.Delay(30);

        // The cancel commits while the control plane's view of the job still says running: the race, made certain.
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        await store.ApplyAsync(new Transition(job.Id, [JobStates.Running], JobStates.Cancelled, "cancelled by request") { AtMs = now, EndedMs = now, Reason = "cancelled" });
        var rec = await cp.ReportAsync(p.Id, reg.Epoch, job.Id, JobStates.Succeeded, 0, "exit 0");

        Assert.Equal(JobStates.Cancelled, rec.State);
        var usage = Assert.Single(await store.JobUsageAsync(job.Id));
        Assert.True(usage.EndedMs - usage.StartedMs >= 30, $"metered {usage.EndedMs - usage.StartedMs} ms");
        Assert.Contains(await store.EventsAsync(job.Id), e => e.Message.StartsWith("process stopped", StringComparison.Ordinal));
    }
}
