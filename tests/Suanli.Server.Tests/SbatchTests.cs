using System.Diagnostics;
using System.Net;
using System.Text;
using Suanli.Core.Domain;

namespace Suanli.Server.Tests;

public class SbatchTests
{
    private static JobDocument Parse(string script) => Sbatch.ToJob(script, AcceleratorCatalogue.BuiltIn);

    [Theory]
    [InlineData("30", 1800)]
    [InlineData("30:15", 1815)]
    [InlineData("2:00:00", 7200)]
    [InlineData("1-12", 129600)]
    [InlineData("1-12:30", 131400)]
    [InlineData("1-00:00:05", 86405)]
    public void Time_EverySlurmFormat(string text, long seconds)
    {
        var errors = new List<FieldError>();
        Assert.Equal(seconds, Sbatch.Time(text, errors));
        Assert.Empty(errors);
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("1:2:3:4")]
    [InlineData("UNLIMITED")]
    [InlineData("0")]
    public void Time_Bad_IsAnErrorNamingTheDirective(string text)
    {
        var errors = new List<FieldError>();
        Assert.Null(Sbatch.Time(text, errors));
        Assert.Equal("#SBATCH --time", Assert.Single(errors).Field);
    }

    [Fact]
    public void Directives_LongShortEqualsAndSpaceForms_BecomeAJob()
    {
        var script = """
            #!/bin/bash
            # a comment
            #SBATCH -J weather-7
            #SBATCH --nodes=2
            #SBATCH --ntasks-per-node 4
            #SBATCH -c2
            #SBATCH --mem=16G
            #SBATCH --gres=gpu:A100:4   # four cards per node
            #SBATCH -t 1-00:00:00
            #SBATCH -p gpu
            #SBATCH --export=ALL,OMP_NUM_THREADS=2
            #SBATCH -o out-%j.txt
            srun ./model
            #SBATCH --array=1-10
            """;
        var doc = Parse(script);
        Assert.Equal("weather-7", doc.Name);
        Assert.Equal(8, doc.Tasks);
        Assert.Equal(2m, doc.Resources.Cpu);
        Assert.Equal(4096, doc.Resources.MemoryMiB);
        Assert.Equal(1, doc.Resources.AcceleratorCount);
        Assert.Equal(["A100"], doc.Resources.Accelerators);
        Assert.Equal(86400, doc.TimeLimitSeconds);
        Assert.Equal(script, doc.Script);
        Assert.Equal("sbatch", doc.Format);
        Assert.Equal("2", doc.Env["OMP_NUM_THREADS"]);
        Assert.Equal("8", doc.Env["SLURM_NTASKS"]);
        Assert.Equal("gpu", doc.Env["SLURM_JOB_PARTITION"]);
    }

    [Fact]
    public void MemPerCpu_AndTotalGpus()
    {
        var doc = Parse("#!/bin/sh\n#SBATCH -n 4\n#SBATCH -c 3\n#SBATCH --mem-per-cpu=500M\n#SBATCH -G 8\n#SBATCH -t 10\necho\n");
        Assert.Equal(4, doc.Tasks);
        Assert.Equal(1500, doc.Resources.MemoryMiB);
        Assert.Equal(2, doc.Resources.AcceleratorCount);
    }

    [Theory]
    [InlineData("#SBATCH --array=0-9%0", "#SBATCH --array", "format")]
    [InlineData("#SBATCH --array=5-1", "#SBATCH --array", "range")]
    [InlineData("#SBATCH --array=x", "#SBATCH --array", "format")]
    [InlineData("#SBATCH --dependency=afterok:12?afterany:13", "#SBATCH --dependency", "unsupported")]
    [InlineData("#SBATCH --dependency=singleton", "#SBATCH --dependency", "format")]
    [InlineData("#SBATCH --constraint=haswell", "#SBATCH --constraint", "unsupported")]
    [InlineData("#SBATCH --gres=gpu:XYZ:2", "#SBATCH --gres", "known")]
    [InlineData("#SBATCH --gres=fpga:1", "#SBATCH --gres", "unsupported")]
    [InlineData("#SBATCH --mem=lots", "#SBATCH --mem", "format")]
    [InlineData("#SBATCH -N 2-4", "#SBATCH --nodes", "unsupported")]
    public void UnhonourableDirective_FailsWithTheReason(string line, string field, string rule)
    {
        var e = Assert.Throws<ValidationException>(() => Parse($"#!/bin/sh\n#SBATCH -t 5\n{line}\necho\n"));
        Assert.Contains(e.Errors, x => x.Field == field && x.Rule == rule);
    }

    [Fact]
    public void Dependency_SlurmListSyntax_BecomesItems()
    {
        var doc = Parse("#!/bin/sh\n#SBATCH -t 5\n#SBATCH --dependency=afterok:12:13,afterany:14\necho\n");
        Assert.Equal(["afterok:12", "afterok:13", "afterany:14"], doc.Dependencies);
    }

    [Theory]
    [InlineData("0-3", new[] { 0, 1, 2, 3 })]
    [InlineData("1,3,5", new[] { 1, 3, 5 })]
    [InlineData("0-9:4", new[] { 0, 4, 8 })]
    [InlineData("7,0-2", new[] { 0, 1, 2, 7 })]
    public void ArrayIndices_SlurmSyntax(string text, int[] expected)
    {
        var errors = new List<FieldError>();
        Assert.Equal(expected, Sbatch.ArrayIndices(text, errors));
        Assert.Empty(errors);
    }

    [Fact]
    public async Task ArrayScript_BecomesOneJobPerTask_WithArrayVariables()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("arrays");
        using var t = s.Client(key);
        // At most one element at a time (%1): each starts only after the previous one ended.
        var script = "#!/bin/sh\n#SBATCH -J sweep\n#SBATCH --array=1-3%1\n#SBATCH -t 1\n#SBATCH --mem=64M\n#SBATCH -c 1\n" +
            "sleep 0.5; echo \"task=$SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT array=$SLURM_ARRAY_JOB_ID\"\n";
        var created = await (await t.PostAsync("/api/v1/jobs", new StringContent(script, Encoding.UTF8, "text/x-shellscript"))).Json(HttpStatusCode.Created);
        var ids = created["arrayJobs"]!.AsArray().Select(x => x!.GetValue<long>()).ToList();
        Assert.Equal(3, ids.Count);
        Assert.Equal(ids[0], created["id"]!.GetValue<long>());
        for (var i = 0; i < 3; i++)
        {
            var j = await t.WaitJob(ids[i], x => x.State() is "succeeded" or "failed");
            Assert.Equal("succeeded", j.State());
            Assert.Equal($"sweep_{i + 1}", j["name"]!.GetValue<string>());
            var logs = string.Concat((await t.Get($"/api/v1/jobs/{ids[i]}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
            Assert.Equal($"task={i + 1} of 3 array={ids[0]}\n", logs);
        }

        var jobs = new List<System.Text.Json.Nodes.JsonNode>();
        foreach (var id in ids)
        {
            jobs.Add(await t.Get($"/api/v1/jobs/{id}"));
        }

        for (var i = 1; i < 3; i++)
        {
            Assert.True(jobs[i]["startedAt"]!.GetValue<DateTimeOffset>() >= jobs[i - 1]["endedAt"]!.GetValue<DateTimeOffset>(), $"element {i} overlapped element {i - 1} despite %1");
        }
    }

    [Fact]
    public void MissingTimeLimit_IsRequired()
    {
        var e = Assert.Throws<ValidationException>(() => Parse("#!/bin/sh\n#SBATCH -J x\necho\n"));
        Assert.Contains(e.Errors, x => x.Field == "#SBATCH --time" && x.Rule == "required");
    }

    [Fact]
    public async Task SbatchScript_RunsOnTheLocalProvider_WithSlurmVariables_AndDryRunPrintsTheSpec()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("hpc");
        var script = "#!/bin/sh\n#SBATCH --job-name=hello-slurm\n#SBATCH -n 2\n#SBATCH -c 1\n#SBATCH --mem=128M\n#SBATCH -t 1:00\n" +
            "echo \"id=$SLURM_JOB_ID tasks=$SLURM_NTASKS name=$SLURM_JOB_NAME\"\n";
        using var t = s.Client(key);
        var job = await (await t.PostAsync("/api/v1/jobs", new StringContent(script, Encoding.UTF8, "text/x-shellscript"))).Json(HttpStatusCode.Created);
        var id = job["id"]!.GetValue<long>();
        Assert.Equal("hello-slurm", job["name"]!.GetValue<string>());
        await t.WaitJob(id, j => j.State() == "succeeded");
        var logs = string.Concat((await t.Get($"/api/v1/jobs/{id}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
        Assert.Equal($"id={id} tasks=2 name=hello-slurm\n", logs);

        var file = Path.Combine(s.DataDir, "job.sbatch");
        await File.WriteAllTextAsync(file, script);
        var psi = new ProcessStartInfo("dotnet", [ServerProcess.SuanliDll, "submit", file, "--dry-run"]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stdout = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.Equal(0, p.ExitCode);
        Assert.Contains("\"timeLimitSeconds\": 60", stdout, StringComparison.Ordinal);
        Assert.Contains("\"format\": \"sbatch\"", stdout, StringComparison.Ordinal);
    }
}
