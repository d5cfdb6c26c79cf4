using Microsoft.Extensions.Logging;

namespace Suanli.Server;

/// <summary>
/// The control plane's log lines, source-generated (no boxing, no formatting below the enabled level), with stable
/// event ids by area: 1000–1099 start-up and recovery, 1100–1199 the scheduling loop, 1200–1299 providers and agents,
/// 1300–1399 jobs, 1400–1499 the market and retention. At Information the server writes one line per scheduling cycle
/// that had work; details are at Debug.
/// </summary>
internal static partial class ServerLog
{
    [LoggerMessage(EventId = 1000, Level = LogLevel.Information, Message = "recovered {Jobs} active jobs, {Providers} providers")]
    public static partial void Recovered(ILogger log, int jobs, int providers);

    [LoggerMessage(EventId = 1100, Level = LogLevel.Information,
        Message = "cycle: {Pending} pending, {Leased} leased, {Waiting} waiting, {Preempted} preempted, {Held} held by admission in {Milliseconds:F1} ms")]
    public static partial void Cycle(ILogger log, int pending, int leased, int waiting, int preempted, int held, double milliseconds);

    [LoggerMessage(EventId = 1101, Level = LogLevel.Error, Message = "scheduling cycle failed ({Failures} in a row); retrying in {DelayMs} ms")]
    public static partial void CycleFailed(ILogger log, Exception error, int failures, long delayMs);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Debug, Message = "cycle: job {Job} leased on {Group} of provider {Provider}")]
    public static partial void Leased(ILogger log, long job, string group, string provider);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Debug, Message = "cycle: lease of job {Job} not written ({Code}): {Reason}")]
    public static partial void LeaseRefused(ILogger log, long job, string code, string reason);

    [LoggerMessage(EventId = 1200, Level = LogLevel.Warning, Message = "a new agent took over provider {Provider} from its live agent of epoch {Epoch}")]
    public static partial void AgentTakeOver(ILogger log, string provider, long epoch);

    [LoggerMessage(EventId = 1201, Level = LogLevel.Warning, Message = "provider {Provider} lost: no heartbeat for {Seconds:F0} s; {Jobs} jobs affected")]
    public static partial void ProviderLost(ILogger log, string provider, double seconds, int jobs);

    [LoggerMessage(EventId = 1300, Level = LogLevel.Debug, Message = "lost handling of job {Job} skipped")]
    public static partial void LostHandlingSkipped(ILogger log, Exception reason, long job);

    [LoggerMessage(EventId = 1400, Level = LogLevel.Information, Message = "removed {Chunks} output chunks of jobs that ended more than {Days} days ago")]
    public static partial void OutputPurged(ILogger log, int chunks, double days);
}
