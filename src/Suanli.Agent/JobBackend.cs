namespace Suanli.Agent;

/// <summary>A job a backend has taken: completes <see cref="Started"/> when it really runs and <see cref="Exited"/> at its end.</summary>
public class JobHandle(JobLaunch job)
{
    public JobLaunch Job { get; } = job;

    /// <summary>Where it runs, for the "running" report (a pid, a Slurm job id).</summary>
    public string Where { get; set; } = "";

    /// <summary>Set when the agent or the backend stopped it (cancel, time limit, self-fencing).</summary>
    public string? StoppedBecause { get; set; }

    /// <summary>Completes when the job's processes have started (a batch system may queue it first).</summary>
    public Task Started { get; set; } = Task.CompletedTask;

    /// <summary>Completes with the exit code once the job and its output are done.</summary>
    public Task<int> Exited { get; set; } = Task.FromResult(0);

    /// <summary>What the backend's own accounting says once the job ended (elapsed seconds, allocated TRES); null if none.</summary>
    public (long ElapsedSeconds, string Tres)? Accounting { get; set; }
}

/// <summary>Where an agent runs jobs: this machine (<see cref="LocalBackend"/>) or a Slurm cluster (<see cref="SlurmBackend"/>).</summary>
public interface IJobBackend
{
    /// <summary>What the backend is and enforces, for the agent's start-up line.</summary>
    string Describe { get; }

    /// <summary>How the backend isolates tenants' jobs, shown in the provider list; null when the backend's own system does (Slurm).</summary>
    string? Isolation => null;

    /// <summary>The node groups this backend offers when the agent was given none (discovery), else null.</summary>
    Task<IReadOnlyList<GroupOffer>?> DiscoverAsync(CancellationToken ct);

    /// <summary>Starts a job in node group <paramref name="group"/>; <paramref name="output"/> receives its output in order.</summary>
    Task<JobHandle> StartAsync(JobLaunch job, string group, Func<string, Task> output);

    /// <summary>Stops a job and everything it started.</summary>
    void Stop(JobHandle job, string why);

    /// <summary>
    /// Warns a spot job that it will be preempted in <paramref name="seconds"/> (so it can checkpoint); false when the
    /// backend has no way to tell the job (it is then stopped at the deadline without warning).
    /// </summary>
    Task<bool> NotifyAsync(JobHandle job, int seconds, string reason) => Task.FromResult(false);

    /// <summary>The notice file's text: the seconds left on the first line, then the reason.</summary>
    static string NoticeText(int seconds, string reason) => $"{seconds.ToString(System.Globalization.CultureInfo.InvariantCulture)}\n{reason}\n";

    /// <summary>Stops what a previous, killed agent left running; returns how many jobs it found.</summary>
    int ReapLeftovers();

    /// <summary>
    /// Null when the backend can take and run jobs, else why not. An agent whose backend is unhealthy stops
    /// heartbeating, so the control plane marks the provider lost and its jobs go elsewhere.
    /// </summary>
    Task<string?> HealthAsync(CancellationToken ct);
}
