using Suanli.Core.Domain;
using Suanli.Core.Scheduling;

namespace Suanli.Core.Tests;

internal static class Fixtures
{
    public static Pool Cpus(int nodes, int cores = 1) => Pool.Uniform(nodes, new NodeShape(cores * 1000L, 1024));

    public static JobSpec Job(long id, int tasks, long submit, long req, int cores = 1, string tenant = "t", int priority = 0) =>
        new(id, tenant, new TaskResources(cores * 1000L, 0), tasks, submit, req, priority);

    public static RunningJob Start(Scheduler s, ClusterState state, JobSpec job, long now)
    {
        var alloc = Scheduler.PlaceInGroup(job, 0, state, s.Policy.NodeScorer) ?? throw new InvalidOperationException("does not fit");
        state.Allocate(alloc);
        return new RunningJob(job, now, alloc);
    }
}
