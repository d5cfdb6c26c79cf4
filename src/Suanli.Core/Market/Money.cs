using System.Globalization;
using Suanli.Core.Domain;

namespace Suanli.Core.Market;

/// <summary>Money: integer fen (分; 100 fen = 1 yuan). Every stored amount is a whole number of fen.</summary>
public static class Money
{
    /// <summary>Formats fen as yuan with two decimals ("12.34").</summary>
    public static string Yuan(long fen)
    {
        var sign = fen < 0 ? "-" : "";
        var a = Math.Abs((decimal)fen);
        return sign + (a / 100m).ToString("0.00", CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Parses a yuan amount ("12.34", at most two decimals) into fen; null when it is not a plain number with at most
    /// two decimals.
    /// </summary>
    public static long? ParseYuan(string text)
    {
        if (!decimal.TryParse(text, NumberStyles.AllowDecimalPoint | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var y))
        {
            return null;
        }

        var fen = y * 100m;
        return fen != decimal.Truncate(fen) || Math.Abs(fen) > long.MaxValue / 4 ? null : (long)fen;
    }

    /// <summary>Rounds a fractional fen amount half away from zero (the usual commercial rule) to whole fen.</summary>
    public static long Round(decimal fen) => (long)Math.Round(fen, 0, MidpointRounding.AwayFromZero);

    /// <summary>The share <paramref name="basisPoints"/>/10000 of an amount, rounded down (never more than the share).</summary>
    public static long Share(long fen, int basisPoints) => (long)((decimal)fen * basisPoints / 10000m);
}

/// <summary>Sales tiers of an offer (issue: on-demand, reserved, interruptible).</summary>
public static class Tiers
{
    public const string OnDemand = "on-demand";
    public const string Reserved = "reserved";
    public const string Interruptible = "interruptible";

    public static IReadOnlyList<string> All { get; } = [OnDemand, Reserved, Interruptible];

    public static bool IsKnown(string tier) => All.Contains(tier, StringComparer.Ordinal);
}

/// <summary>
/// Standard units a price is quoted in: card-hour (卡时), core-hour (核时) or precision-specific TFLOPS·h. Prices are
/// integer fen per unit.
/// </summary>
public static class PriceUnits
{
    public const string CardHour = "card-hour";
    public const string CoreHour = "core-hour";
    public const string Fp16TflopsHour = "fp16-tflops-hour";
    public const string Fp32TflopsHour = "fp32-tflops-hour";
    public const string Fp64TflopsHour = "fp64-tflops-hour";

    public static IReadOnlyList<string> All { get; } = [CardHour, CoreHour, Fp16TflopsHour, Fp32TflopsHour, Fp64TflopsHour];

    public static bool IsKnown(string unit) => All.Contains(unit, StringComparer.Ordinal);

    /// <summary>
    /// Units one whole node of <paramref name="shape"/> provides per hour: its cards, its cores, or its cards' nameplate
    /// TFLOPS at the precision. Null when the unit does not apply to the shape (card-hours of a CPU node, TFLOPS of an
    /// unknown or FLOPS-less model).
    /// </summary>
    public static decimal? PerNode(string unit, NodeShape shape, AcceleratorCatalogue catalogue)
    {
        var model = shape.AcceleratorModel is null ? null : catalogue.Find(shape.AcceleratorModel);
        decimal? Tflops(double v) => shape.AcceleratorCount > 0 && v > 0 ? (decimal)v * shape.AcceleratorCount : null;
        return unit switch
        {
            CardHour => shape.AcceleratorCount > 0 ? shape.AcceleratorCount : null,
            CoreHour => shape.MilliCpu / 1000m,
            Fp16TflopsHour => model is null ? null : Tflops(model.Fp16DenseTflops),
            Fp32TflopsHour => model is null ? null : Tflops(model.Fp32Tflops),
            Fp64TflopsHour => model is null ? null : Tflops(model.Fp64Tflops),
            _ => null,
        };
    }
}

/// <summary>
/// Charging rule shared by the scheduler's budget filter, the escrow hold and the settlement: a job pays for the share of
/// each node it blocks (its largest fraction of the node's CPU, memory or cards, <see cref="Scheduling.Pricing.NodeFraction"/>)
/// expressed in the offer's unit, times the price, times the hours.
/// </summary>
public static class Charging
{
    /// <summary>Units per hour (×1000, rounded half up) a job consumes on a node of <paramref name="shape"/>.</summary>
    public static long UnitsMilli(TaskResources task, int tasks, NodeShape shape, decimal unitsPerNode) =>
        Money.Round(Scheduling.Pricing.NodeFraction(task, shape) * tasks * unitsPerNode * 1000m);

    /// <summary>Cost in fen of <paramref name="unitsMilli"/>/1000 units for <paramref name="milliseconds"/> at <paramref name="priceFen"/> per unit-hour.</summary>
    public static long Cost(long priceFen, long unitsMilli, long milliseconds) =>
        Money.Round((decimal)priceFen * unitsMilli * milliseconds / 3_600_000_000m);
}

/// <summary>What a job holds in escrow when it is placed on priced capacity: the one rule the scheduler's funds check,
/// the control plane's hold and the simulator's budgets share.</summary>
public static class Escrow
{
    /// <summary>
    /// Fen held for <paramref name="job"/> on <paramref name="group"/>: the terms' price per unit-hour × the units the
    /// job takes (its share of a node × tasks × units per node) × its time limit; 0 on a group without a price.
    /// </summary>
    /// <remarks>An amount beyond what fen can count saturates at <see cref="long.MaxValue"/>: no tenant can cover it.</remarks>
    public static long HoldFen(JobSpec job, NodeGroup group) =>
        job.RequestedSeconds > long.MaxValue / 1000 ? (IsPriced(group) ? long.MaxValue : 0) : CostFen(job, group, job.RequestedSeconds * 1000);

    /// <summary>Units per hour (×1000) the job takes on the group under its terms (saturating).</summary>
    public static long UnitsMilli(JobSpec job, NodeGroup group, MarketTerms terms)
    {
        try
        {
            return Charging.UnitsMilli(job.Task, job.Tasks, group.Shape, terms.UnitsPerNode);
        }
        catch (OverflowException)
        {
            return long.MaxValue;
        }
    }

    /// <summary>What an attempt that ran <paramref name="milliseconds"/> costs on the group (fen, saturating), before the hold caps it.</summary>
    public static long CostFen(JobSpec job, NodeGroup group, long milliseconds)
    {
        if (!IsPriced(group))
        {
            return 0;
        }

        try
        {
            return Charging.Cost(group.Terms!.PriceFen!.Value, UnitsMilli(job, group, group.Terms), milliseconds);
        }
        catch (OverflowException)
        {
            return long.MaxValue;
        }
    }

    private static bool IsPriced(NodeGroup group) => group.Terms is { PriceFen: > 0 };
}

/// <summary>How a settled amount is split between the tenant, its voucher, the provider and the platform.</summary>
public readonly record struct SettlementSplit(long Charged, long Tenant, long Voucher, long Provider, long Fee);

/// <summary>The settlement rule (docs/trading.md), pure so that settlement, verification and tests share it.</summary>
public static class Settlement
{
    /// <summary>
    /// Splits the cost of one attempt. The tenant is never charged more than was held: charged = min(cost, hold). A
    /// voucher covers its share of the charge, at most what it held. The provider receives the charge at the seller's
    /// price (equal to the buyer's except after an auction's trade reduction) less the platform fee; the platform keeps
    /// the fee and any market surplus.
    /// </summary>
    public static SettlementSplit Split(long costFen, long sellerCostFen, long holdFen, long voucherHoldFen, int voucherShareBps, int feeBps)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(costFen);
        ArgumentOutOfRangeException.ThrowIfNegative(sellerCostFen);
        var charged = Math.Min(costFen, holdFen);
        var sellerCharged = Math.Min(sellerCostFen, charged);
        var voucher = Math.Min(Money.Share(charged, voucherShareBps), voucherHoldFen);
        var fee = Money.Share(sellerCharged, feeBps) + (charged - sellerCharged);
        return new SettlementSplit(charged, charged - voucher, voucher, charged - fee, fee);
    }
}
