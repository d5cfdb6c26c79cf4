using System.Globalization;
using Suanli.Core.Domain;

namespace Suanli.Simulation.Traces;

/// <summary>
/// Reads the Philly-derived Chronus CSVs (job_id, user, num_gpu, submit_time, duration, ...). The trace has no
/// user estimate, so the requested time is the duration (an oracle estimate, as Helios' SJF baseline; stated in
/// results). Jobs of up to 8 cards are one task; larger multiples of 8 are tasks of 8 cards; other sizes are one-card
/// tasks. CPU-only jobs ask for one core. When philly_vc.csv lies beside the trace, the default cluster is one
/// provider per virtual cluster with 8-card nodes, and each job may only run in its own VC (Helios' setup).
/// </summary>
public static class PhillyReader
{
    /// <summary>Cards per node in the Philly cluster.</summary>
    public const int GpusPerNode = 8;

    /// <summary>Reads the trace.</summary>
    public static Trace Read(string path)
    {
        var trace = new Trace();
        var vcs = LoadVcs(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", "philly_vc.csv"));
        if (vcs.Count > 0)
        {
            trace.DefaultPool = new Pool(
                vcs.Select(v => new Provider("vc_" + v.Vc, "philly", "philly")),
                vcs.Select(v => new NodeGroup("vc_" + v.Vc, "vc_" + v.Vc, new NodeShape(64000, 512 * 1024, "V100", GpusPerNode), v.Nodes)));
        }

        var rows = CsvTable.Rows(path, out var t);
        int cId = t.Column("job_id", path), cUser = t.Column("user", path), cGpu = t.Column("num_gpu", path),
            cSubmit = t.Column("submit_time", path), cDur = t.Column("duration", path);
        var constraints = new Dictionary<string, JobConstraints>(StringComparer.Ordinal);
        foreach (var (line, cells) in rows)
        {
            if (cells.Length < t.Width
                || !long.TryParse(cells[cId], NumberStyles.Integer, CultureInfo.InvariantCulture, out var id)
                || !int.TryParse(cells[cGpu], NumberStyles.Integer, CultureInfo.InvariantCulture, out var gpus)
                || !long.TryParse(cells[cSubmit], NumberStyles.Integer, CultureInfo.InvariantCulture, out var submit)
                || !long.TryParse(cells[cDur], NumberStyles.Integer, CultureInfo.InvariantCulture, out var duration))
            {
                trace.Bad(line, $"expected {t.Width} comma-separated fields with integer job_id, num_gpu, submit_time, duration");
                continue;
            }

            if (duration <= 0 || gpus < 0 || submit < 0)
            {
                trace.Skip(line, "non-positive duration or negative size/submit time");
                continue;
            }

            var user = cells[cUser];
            JobConstraints? where = null;
            if (trace.DefaultPool is not null)
            {
                if (!trace.DefaultPool.Providers.ContainsKey(user))
                {
                    trace.Skip(line, "virtual cluster not in philly_vc.csv");
                    continue;
                }

                if (!constraints.TryGetValue(user, out where))
                {
                    where = new JobConstraints(Providers: [user]);
                    constraints[user] = where;
                }
            }

            var (task, tasks) = Shape(gpus);
            trace.Jobs.Add(new TraceJob(new JobSpec(id, user, task, tasks, submit, duration, Constraints: where), duration));
        }

        return trace;
    }

    private static (TaskResources Task, int Tasks) Shape(int gpus) => gpus switch
    {
        0 => (new TaskResources(1000, 0), 1),
        <= GpusPerNode => (new TaskResources(0, 0, gpus, 1000), 1),
        _ when gpus % GpusPerNode == 0 => (new TaskResources(0, 0, GpusPerNode, 1000), gpus / GpusPerNode),
        _ => (new TaskResources(0, 0, 1, 1000), gpus),
    };

    private static List<(string Vc, int Nodes)> LoadVcs(string path)
    {
        var list = new List<(string, int)>();
        if (!File.Exists(path))
        {
            return list;
        }

        foreach (var line in File.ReadLines(path).Skip(1))
        {
            var parts = line.Split(',');
            if (parts.Length == 2 && int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0)
            {
                list.Add((parts[0].Trim(), n));
            }
        }

        return list;
    }
}
