using System.Globalization;
using Suanli.Core.Domain;

namespace Suanli.Simulation.Traces;

/// <summary>One task row of the Alibaba PAI 2023 (openb) trace.</summary>
public sealed record PaiTask(
    string Name,
    long MilliCpu,
    long MemoryMiB,
    int GpuCount,
    int GpuMilli,
    string GpuSpec,
    long Creation,
    long? Scheduled,
    long Deletion)
{
    /// <summary>The task's resources: share clamped to (0, 1000] for GPU tasks, as the FGD artifact's converter does.</summary>
    public TaskResources Resources { get; } = new(MilliCpu, MemoryMiB, GpuCount,
        GpuCount > 0 ? Math.Clamp(GpuMilli <= 0 ? 1000 : GpuMilli, 1, 1000) : 0,
        GpuSpec.Length == 0 ? null : GpuSpec.Split('|'));
}

/// <summary>One node row of the openb node list.</summary>
public sealed record PaiNode(string Name, long MilliCpu, long MemoryMiB, int Gpus, string? Model);

/// <summary>Reads the openb task and node lists.</summary>
public static class PaiReader
{
    /// <summary>Reads task rows; malformed rows are counted in <paramref name="diagnostics"/>.</summary>
    public static List<PaiTask> ReadTasks(string path, Trace diagnostics)
    {
        var list = new List<PaiTask>();
        var rows = CsvTable.Rows(path, out var t);
        int cName = t.Column("name", path), cCpu = t.Column("cpu_milli", path), cMem = t.Column("memory_mib", path),
            cGpu = t.Column("num_gpu", path), cMilli = t.Column("gpu_milli", path), cSpec = t.Column("gpu_spec", path),
            cCreate = t.Column("creation_time", path), cDelete = t.Column("deletion_time", path), cSched = t.Column("scheduled_time", path);
        foreach (var (line, c) in rows)
        {
            if (c.Length < t.Width
                || !long.TryParse(c[cCpu], NumberStyles.Integer, CultureInfo.InvariantCulture, out var cpu)
                || !long.TryParse(c[cMem], NumberStyles.Integer, CultureInfo.InvariantCulture, out var mem)
                || !int.TryParse(c[cGpu], NumberStyles.Integer, CultureInfo.InvariantCulture, out var gpu)
                || !int.TryParse(c[cMilli], NumberStyles.Integer, CultureInfo.InvariantCulture, out var milli)
                || !long.TryParse(c[cCreate], NumberStyles.Integer, CultureInfo.InvariantCulture, out var created)
                || !long.TryParse(c[cDelete], NumberStyles.Integer, CultureInfo.InvariantCulture, out var deleted)
                || cpu < 0 || mem < 0 || gpu < 0 || milli < 0)
            {
                diagnostics.Bad(line, $"expected {t.Width} fields with non-negative integer cpu_milli, memory_mib, num_gpu, gpu_milli, creation_time, deletion_time");
                continue;
            }

            long? scheduled = long.TryParse(c[cSched], NumberStyles.Integer, CultureInfo.InvariantCulture, out var s) ? s : null;
            list.Add(new PaiTask(c[cName], cpu, mem, gpu, milli, c[cSpec].Trim(), created, scheduled, deleted));
        }

        return list;
    }

    /// <summary>Reads a node list.</summary>
    public static List<PaiNode> ReadNodes(string path)
    {
        var list = new List<PaiNode>();
        var rows = CsvTable.Rows(path, out var t);
        int cName = t.Column("sn", path), cCpu = t.Column("cpu_milli", path), cMem = t.Column("memory_mib", path),
            cGpu = t.Column("gpu", path), cModel = t.Column("model", path);
        foreach (var (line, c) in rows)
        {
            if (c.Length < t.Width
                || !long.TryParse(c[cCpu], NumberStyles.Integer, CultureInfo.InvariantCulture, out var cpu)
                || !long.TryParse(c[cMem], NumberStyles.Integer, CultureInfo.InvariantCulture, out var mem)
                || !int.TryParse(c[cGpu], NumberStyles.Integer, CultureInfo.InvariantCulture, out var gpu))
            {
                throw new FormatException($"{path}:{line}: expected sn, cpu_milli, memory_mib, gpu, model with integer sizes");
            }

            list.Add(new PaiNode(c[cName], cpu, mem, gpu, c[cModel].Trim().Length == 0 ? null : c[cModel].Trim()));
        }

        return list;
    }

    /// <summary>
    /// Groups identical nodes into node groups of one provider ("pai"), keeping the node order inside each group.
    /// Returns the pool and, per node of <paramref name="nodes"/>, its (group, index) position.
    /// </summary>
    public static (Pool Pool, (int Group, int Node)[] Position) BuildPool(IReadOnlyList<PaiNode> nodes)
    {
        var groups = new List<(NodeShape Shape, int Count)>();
        var index = new Dictionary<NodeShape, int>();
        var position = new (int, int)[nodes.Count];
        for (var i = 0; i < nodes.Count; i++)
        {
            var n = nodes[i];
            var shape = new NodeShape(n.MilliCpu, n.MemoryMiB, n.Model, n.Gpus, GpuSharing: n.Gpus > 0);
            if (!index.TryGetValue(shape, out var g))
            {
                g = groups.Count;
                index[shape] = g;
                groups.Add((shape, 0));
            }

            position[i] = (g, groups[g].Count);
            groups[g] = (shape, groups[g].Count + 1);
        }

        var pool = new Pool([new Provider("pai", "pai", "pai")],
            groups.Select((g, i) => new NodeGroup($"{g.Shape.AcceleratorModel ?? "cpu"}-{g.Shape.AcceleratorCount}x-{g.Shape.MilliCpu / 1000}c-{i}", "pai", g.Shape, g.Count)));
        return (pool, position);
    }

    /// <summary>
    /// Reads a task list as a time-based trace: submit = creation time; run = deletion − scheduled time, or
    /// deletion − creation for tasks never scheduled (Pending at snapshot); requested time = run (the trace has no
    /// estimate). The default cluster is the node list beside the trace (GPU nodes, else all nodes).
    /// </summary>
    public static Trace ReadTrace(string path)
    {
        var trace = new Trace();
        var dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        foreach (var candidate in new[] { "openb_node_list_all_node.csv.gz", "openb_node_list_gpu_node.csv.gz", "openb_node_list_all_node.csv", "openb_node_list_gpu_node.csv" })
        {
            var p = Path.Combine(dir, candidate);
            if (File.Exists(p))
            {
                trace.DefaultPool = BuildPool(ReadNodes(p)).Pool;
                break;
            }
        }

        long id = 0;
        foreach (var task in ReadTasks(path, trace))
        {
            id++;
            var start = task.Scheduled ?? task.Creation;
            var run = task.Deletion - start;
            if (run <= 0)
            {
                trace.Skip(id + 1, "non-positive lifetime");
                continue;
            }

            trace.Jobs.Add(new TraceJob(new JobSpec(id, "pai", task.Resources, 1, task.Creation, run), run));
        }

        return trace;
    }
}
