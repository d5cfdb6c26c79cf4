using Suanli.Core.Domain;

namespace Suanli.Core.Units;

/// <summary>Floating-point precision of a compute-hour figure. Kept separate: ratios differ between architectures.</summary>
public enum Precision
{
    Fp16,
    Fp32,
    Fp64,
}

/// <summary>
/// Metered use of one job on one node group: whole durations in seconds, cores in milli-CPU, accelerators in
/// milli-GPU (1000 = one whole card; a shared card counts pro rata).
/// </summary>
public readonly record struct ResourceUsage(long DurationSeconds, long MilliCpu, long GpuMilli, string? AcceleratorModel);

/// <summary>Usage converted into the standard units of product.md.</summary>
public readonly record struct StandardQuantity(
    decimal CoreHours,
    decimal CardHours,
    decimal Fp16TflopsHours,
    decimal Fp32TflopsHours,
    decimal Fp64TflopsHours)
{
    public static StandardQuantity operator +(StandardQuantity a, StandardQuantity b) => new(
        a.CoreHours + b.CoreHours,
        a.CardHours + b.CardHours,
        a.Fp16TflopsHours + b.Fp16TflopsHours,
        a.Fp32TflopsHours + b.Fp32TflopsHours,
        a.Fp64TflopsHours + b.Fp64TflopsHours);

    /// <summary>Compute-hours at <paramref name="precision"/>.</summary>
    public decimal TflopsHours(Precision precision) => precision switch
    {
        Precision.Fp16 => Fp16TflopsHours,
        Precision.Fp32 => Fp32TflopsHours,
        _ => Fp64TflopsHours,
    };
}

/// <summary>Converts metered usage into core-hours, card-hours and precision-specific TFLOPS·h.</summary>
public static class StandardUnits
{
    private const decimal SecondsPerHour = 3600m;

    /// <summary>
    /// Converts one usage record. Card-hours = GPU share × hours; compute-hours at precision p = nameplate dense TFLOPS
    /// at p × card-hours, optionally multiplied by a measured factor (1 when absent). Unknown models contribute
    /// card-hours but no TFLOPS·h.
    /// </summary>
    public static StandardQuantity Convert(ResourceUsage usage, AcceleratorCatalogue catalogue, decimal measuredFactor = 1m)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(usage.DurationSeconds);
        var hours = usage.DurationSeconds / SecondsPerHour;
        var coreHours = usage.MilliCpu / 1000m * hours;
        var cardHours = usage.GpuMilli / 1000m * hours;
        var model = usage.AcceleratorModel is null ? null : catalogue.Find(usage.AcceleratorModel);
        if (model is null || cardHours == 0)
        {
            return new StandardQuantity(coreHours, cardHours, 0, 0, 0);
        }

        return new StandardQuantity(
            coreHours,
            cardHours,
            (decimal)model.Fp16DenseTflops * cardHours * measuredFactor,
            (decimal)model.Fp32Tflops * cardHours * measuredFactor,
            (decimal)model.Fp64Tflops * cardHours * measuredFactor);
    }
}
