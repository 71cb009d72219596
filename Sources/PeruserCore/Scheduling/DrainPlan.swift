// How children of an older generation (or every child, during a graceful stop) are made to
// finish, and when one that ignores ExpireTimeout is killed.
//
// Multiplexers go first: each is asked to retire (stop accepting, finish what it holds). Only
// once none of them is alive are the workers asked to drain their channels and exit, so that no
// multiplexer is left passing connections into a channel nobody reads. A worker stopped for
// ExpireTimeout that is still there a grace period after it was last signalled is killed.
//
// Everything here comes from the parent's private records (no child can write them); the
// arithmetic on the times saturates all the same.

/// A live child, as the parent's private record describes it.
public struct DrainCandidate: Equatable {
    public var slot: Int
    public var isMultiplexer: Bool
    public var generation: UInt32
    /// Already asked to exit when done (SIGUSR1).
    public var retiring: Bool
    /// Already asked to drain its channel and exit (SIGWINCH).
    public var draining: Bool
    /// Stopped for ExpireTimeout (SIGTERM).
    public var expired: Bool
    /// When a stop was last signalled to it (ms, monotonic).
    public var signalledAt: Int64

    public init(slot: Int, isMultiplexer: Bool, generation: UInt32, retiring: Bool = false, draining: Bool = false,
                expired: Bool = false, signalledAt: Int64 = 0) {
        self.slot = slot
        self.isMultiplexer = isMultiplexer
        self.generation = generation
        self.retiring = retiring
        self.draining = draining
        self.expired = expired
        self.signalledAt = signalledAt
    }
}

/// One signal to send. The parent records each as it sends it: `.retire` sets the child's
/// retiring flag, `.drain` its draining flag, and every one sets its `signalledAt` to now.
public enum DrainAction: Equatable {
    /// SIGUSR1: a multiplexer stops accepting and exits once it holds nothing.
    case retire(slot: Int)
    /// SIGWINCH: a worker drains its channel and exits.
    case drain(slot: Int)
    /// SIGKILL: an expired child ignored SIGTERM for longer than the grace period.
    case kill(slot: Int)
}

public enum DrainPlan {
    /// How long a child stopped for ExpireTimeout may ignore its signal before SIGKILL.
    public static let expireGraceMilliseconds: Int64 = 2000

    /// The signals to send now, in the order of `children`: first every retire and drain, then
    /// every kill. `generation`: the current one; `everyone`: a graceful stop, when the current
    /// generation finishes too. A child signalled in this plan is not killed in it (its grace
    /// period starts again, as it did when the parent signalled it).
    public static func plan(children: [DrainCandidate], generation: UInt32, everyone: Bool,
                            now: Int64) -> [DrainAction] {
        func finishing(_ child: DrainCandidate) -> Bool { everyone || child.generation != generation }

        let multiplexersLeft = children.contains { $0.isMultiplexer && finishing($0) }
        var actions: [DrainAction] = []
        var signalled = Set<Int>()
        for child in children where finishing(child) {
            if child.isMultiplexer {
                guard !child.retiring else { continue }
                actions.append(.retire(slot: child.slot))
                signalled.insert(child.slot)
            } else if !multiplexersLeft && !child.draining {
                actions.append(.drain(slot: child.slot))
                signalled.insert(child.slot)
            }
        }
        for child in children where child.expired && !signalled.contains(child.slot)
            && elapsedMilliseconds(since: child.signalledAt, now: now) > expireGraceMilliseconds {
            actions.append(.kill(slot: child.slot))
        }
        return actions
    }
}
