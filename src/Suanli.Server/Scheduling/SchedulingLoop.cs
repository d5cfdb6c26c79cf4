using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Suanli.Server.Scheduling;

/// <summary>
/// The scheduling loop, and nothing else: it turns the control plane's wheel (<see cref="ControlPlane.TickAsync"/>)
/// whenever there is work. A fault in one turn (a busy or failing database, a bug in one cycle) never stops the host:
/// it is logged and the loop backs off, doubling up to 30 s while the turns keep failing.
/// </summary>
public sealed class SchedulingLoop(ControlPlane plane, TimeProvider time, ILogger<SchedulingLoop> log) : BackgroundService
{
    /// <summary>The longest back-off after repeated failures.</summary>
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);

    /// <summary>The back-off after <paramref name="failures"/> failed turns in a row: 200 ms, doubling, at most <see cref="MaxBackoff"/>.</summary>
    public static TimeSpan Backoff(int failures) =>
        TimeSpan.FromMilliseconds(Math.Min(MaxBackoff.TotalMilliseconds, 100 * Math.Pow(2, Math.Clamp(failures, 1, 9))));

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await plane.WaitForWorkAsync(stoppingToken);
                await plane.TickAsync();
                failures = 0;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                failures++;
                var delay = Backoff(failures);
                ServerLog.CycleFailed(log, e, failures, (long)delay.TotalMilliseconds);
                await Task.Delay(delay, time, stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
            }
        }
    }
}
