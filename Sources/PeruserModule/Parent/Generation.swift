// What the parent makes for each generation (channels, the child table, the multiplexers'
// state) and what outlives generations (the demand pipe, the multiplexers' secret, the child
// records), kept in Apache's retained data: the module is unloaded on every restart.
import CPeruserShim
import Glibc
import PeruserCore

/// The parent's private record of one child slot (index = slot). It lives in Apache's retained
/// data, which is parent memory: it survives the module's unload and reload on restarts, so
/// children of older generations are still known, and no child can write it.
struct ChildRecord {
    var pid: Int32 = 0              // 0: the slot is free
    var environment: Int32 = 0      // -1: multiplexer
    var generation: UInt32 = 0
    var type: UInt8 = 0             // ChildType
    var retiring: UInt8 = 0         // asked to exit when done (SIGUSR1)
    var draining: UInt8 = 0         // asked to drain its channel and exit (SIGWINCH)
    var expired: UInt8 = 0          // stopped for ExpireTimeout
    var page: Int32 = 0             // a worker's page in its environment's pool of the child table
    var startedAt: Int64 = 0        // ms, monotonic
    var signalledAt: Int64 = 0      // ms, monotonic: when a stop was last signalled
}

/// What outlives a generation, in Apache's retained data (parent memory, zeroed when Apache
/// creates it; what is malloc'd from here is parent memory too). The module is unloaded and
/// reloaded on every restart, so none of this may live in a Swift global.
struct LastingState {
    var initialized: Int32 = 0
    var scoreboardSlots: Int32 = 0
    var demand: (Int32, Int32) = (-1, -1)     // multiplexers write .1, the parent reads .0
    var previousHandbackEnds: UnsafeMutablePointer<Int32>?  // the previous generation's hand-back receiving ends
    var previousHandbackCount: Int32 = 0
    var previousGeneration: UInt32 = 0
    var multiplexerSecret: UnsafeMutableRawPointer?  // one page: the key of hand-back tickets
    var multiplexerSecretFD: Int32 = -1              // its memfd (for the multiplexers' image)
    var multiplexerStateFD: Int32 = -1               // the board's memfd (for the multiplexers' image)
    var control: UnsafeMutablePointer<Int32>?  // the parent's end of each multiplexer's control channel, by slot
    var table: UnsafeMutableRawPointer?        // this generation's child table, and its memfd
    var tableSize = 0
    var tableEnvironments: Int32 = 0
    var tableFD: Int32 = -1
    var previousTable: UnsafeMutableRawPointer?
    var previousTableSize = 0
    var previousTableEnvironments: Int32 = 0
    var multiplexerState: UnsafeMutableRawPointer?  // the multiplexers' availability board
    var multiplexerStateSize = 0
    var records: UnsafeMutablePointer<ChildRecord>?  // mostServerLimit entries
}

/// Apache's retained data of this MPM (parent memory; children inherit a copy).
nonisolated(unsafe) var lasting: UnsafeMutablePointer<LastingState>?

/// One environment's two one-way channels: hand-off (multiplexers to its workers) and
/// hand-back (its workers to the multiplexers). None is shared between environments.
struct EnvironmentChannels {
    var handoffSend = FileDescriptor.none
    var handoffReceive = FileDescriptor.none
    var handbackSend = FileDescriptor.none
    var handbackReceive = FileDescriptor.none

    static func open() throws(Errno) -> EnvironmentChannels {
        var channels = EnvironmentChannels()
        (channels.handoffSend, channels.handoffReceive) = try Channel.oneWay()
        do throws(Errno) {
            (channels.handbackSend, channels.handbackReceive) = try Channel.oneWay()
        } catch {
            channels.closeAll()
            throw error
        }
        return channels
    }

    mutating func closeAll() {
        handoffSend.close()
        handoffReceive.close()
        handbackSend.close()
        handbackReceive.close()
    }
}

/// This generation's channels, by environment (the parent's, and each child's inherited copy).
nonisolated(unsafe) var channels: [EnvironmentChannels] = []

/// The kinds of messages on a multiplexer's control channel: {environment, kind} with the end.
enum ControlKind: UInt32 {
    case handoff = 0
    case handback = 1
}

/// httpd's exit codes for a child that cannot go on (APEXIT_CHILDSICK, APEXIT_CHILDFATAL).
let exitChildSick: Int32 = 0x7
let exitChildFatal: Int32 = 0xf

extension UnsafeMutablePointer where Pointee == LastingState {
    /// The parent's end of each multiplexer's control channel, by slot.
    func control(_ slot: Int) -> Int32 {
        guard slot >= 0 && slot < mostServerLimit, let control = pointee.control else { return -1 }
        return control[slot]
    }

    func setControl(_ slot: Int, _ fd: Int32) {
        guard slot >= 0 && slot < mostServerLimit, let control = pointee.control else { return }
        control[slot] = fd
    }

    func closeControl(_ slot: Int) {
        let fd = control(slot)
        if fd >= 0 { close(fd) }
        setControl(slot, -1)
    }

    /// A child keeps no parent end of any multiplexer's control channel.
    func closeEveryControl() {
        for slot in 0..<mostServerLimit where control(slot) >= 0 { closeControl(slot) }
    }

    var records: UnsafeMutablePointer<ChildRecord>? { pointee.records }

    var previousHandbacks: [Int32] {
        guard let ends = pointee.previousHandbackEnds else { return [] }
        return (0..<Int(max(0, pointee.previousHandbackCount))).map { ends[$0] }
    }

    func closePreviousHandbacks() {
        if let ends = pointee.previousHandbackEnds {
            for index in 0..<Int(max(0, pointee.previousHandbackCount)) where ends[index] >= 0 {
                close(ends[index])
                ends[index] = -1
            }
        }
    }

    /// The first time the retained data is used (it comes zeroed, and 0 is a valid
    /// descriptor): every descriptor absent, the records and control ends allocated.
    func initializeOnce() -> Bool {
        if pointee.initialized != 0 { return true }
        let slots = mostServerLimit
        guard let records = calloc(slots, MemoryLayout<ChildRecord>.stride)?
                .bindMemory(to: ChildRecord.self, capacity: slots),
              let control = malloc(slots * MemoryLayout<Int32>.stride)?.bindMemory(to: Int32.self, capacity: slots)
        else { return false }
        control.initialize(repeating: -1, count: slots)
        pointee.records = records
        pointee.control = control
        pointee.demand = (-1, -1)
        pointee.tableFD = -1
        pointee.multiplexerSecretFD = -1
        pointee.multiplexerStateFD = -1
        pointee.initialized = 1
        return true
    }
}

enum GenerationError: Error, CustomStringConvertible {
    case system(String, Errno)
    case message(String)

    var description: String {
        switch self {
        case .system(let what, let errno): return "\(what): \(errno)"
        case .message(let text): return text
        }
    }
}

/// The demand pipe and the multiplexers' secret, created once and kept across generations.
func openLastingChannels(_ lasting: UnsafeMutablePointer<LastingState>) throws(GenerationError) {
    if lasting.pointee.demand.0 < 0 {
        do throws(Errno) {
            let pipe = try FileDescriptor.pipe(nonBlocking: true)
            lasting.pointee.demand = (pipe.read.raw, pipe.write.raw)
        } catch {
            throw .system("cannot create the demand pipe", error)
        }
    }
    if lasting.pointee.multiplexerSecret == nil {
        let size = Int(getpagesize())
        do throws(Errno) {
            let secret = try SharedMapping.create("peruser-multiplexer-secret", size: size, keepDescriptor: true)
            guard getrandom(secret.base, 16, 0) == 16 else {
                let failure = Errno.current
                unmap(secret.base, size)
                throw failure
            }
            lasting.pointee.multiplexerSecret = secret.base
            lasting.pointee.multiplexerSecretFD = secret.fd.raw
        } catch {
            throw .system("cannot make the multiplexers' secret", error)
        }
    }
}

func openGenerationChannels() throws(GenerationError) {
    channels = []
    for environment in 0..<configuration.environments.count {
        do throws(Errno) {
            channels.append(try EnvironmentChannels.open())
        } catch {
            throw .system("cannot create the channels of environment \(environmentLabel(environment))", error)
        }
    }
}

/// Ends this generation's channels. The receiving ends of its hand-back channels stay open
/// one generation more (the next generation's multiplexers read them); older ones are closed.
func closeGenerationChannels(_ lasting: UnsafeMutablePointer<LastingState>, generation: UInt32) {
    // Said first: the multiplexers then take the end of a hand-back channel that no worker
    // holds (an environment without workers) for the parent's close, not a sender's shutdown.
    sharedTable?.markGenerationEnded()
    lasting.closePreviousHandbacks()
    free(lasting.pointee.previousHandbackEnds)
    lasting.pointee.previousHandbackEnds = nil
    lasting.pointee.previousHandbackCount = 0
    if !channels.isEmpty, let ends = malloc(MemoryLayout<Int32>.stride * channels.count)?
        .bindMemory(to: Int32.self, capacity: channels.count) {
        for index in channels.indices {
            ends[index] = channels[index].handbackReceive.raw
            channels[index].handbackReceive = .none  // kept, not closed
        }
        lasting.pointee.previousHandbackEnds = ends
        lasting.pointee.previousHandbackCount = Int32(channels.count)
        lasting.pointee.previousGeneration = generation
    }
    for index in channels.indices { channels[index].closeAll() }
    channels = []
}

/// This generation's shared child table (a memfd every child inherits; workers then map a
/// confined view of it) and the multiplexers' availability board. The previous generation's
/// table stays mapped one generation more: its children may still run.
func mapChildTable(_ lasting: UnsafeMutablePointer<LastingState>, slots: Int) throws(GenerationError) {
    let pageSize = Int(getpagesize())
    guard ChildTableLayout.pageSize % pageSize == 0 else {
        throw .message("the page size of this system (\(pageSize) bytes) does not divide the child table's pages "
                       + "(\(ChildTableLayout.pageSize) bytes); this build cannot confine workers here")
    }
    let environments = configuration.environments.count
    let size = ChildTableLayout.size(slots: slots, environments: environments, workerPages: workerPagePools().total)
    let table: SharedMapping
    do throws(Errno) {
        table = try SharedMapping.create("peruser-child-table", size: size, keepDescriptor: true)
    } catch {
        throw .system("cannot create the child table", error)
    }
    if lasting.pointee.tableFD >= 0 { close(lasting.pointee.tableFD) }
    lasting.pointee.tableFD = table.fd.raw
    unmap(lasting.pointee.previousTable, lasting.pointee.previousTableSize)
    lasting.pointee.previousTable = lasting.pointee.table
    lasting.pointee.previousTableSize = lasting.pointee.tableSize
    lasting.pointee.previousTableEnvironments = lasting.pointee.tableEnvironments
    lasting.pointee.table = table.base
    lasting.pointee.tableSize = size
    lasting.pointee.tableEnvironments = Int32(environments)

    // The old board stays with the old children that inherited it.
    unmap(lasting.pointee.multiplexerState, lasting.pointee.multiplexerStateSize)
    lasting.pointee.multiplexerState = nil
    let boardSize = AvailabilityBoard.size(environments: environments)
    do throws(Errno) {
        let board = try SharedMapping.create("peruser-multiplexer-state", size: boardSize, keepDescriptor: true)
        if lasting.pointee.multiplexerStateFD >= 0 { close(lasting.pointee.multiplexerStateFD) }
        lasting.pointee.multiplexerStateFD = board.fd.raw
        lasting.pointee.multiplexerState = board.base
        lasting.pointee.multiplexerStateSize = boardSize
        let attached = AvailabilityBoard(base: board.base, count: max(1, environments))
        attached.reset()
        availabilityBoard = attached
    } catch {
        throw .system("cannot create the multiplexers' state", error)
    }
}

extension EnvironmentChannels {
    /// Moves every connection queued in the hand-off channel back to the multiplexers over the
    /// hand-back channel, untouched: the parent never reads a client's bytes. How many moved,
    /// and how many could not be (closed, logged).
    func returnQueued() -> (moved: Int, lost: Int) {
        guard handoffReceive.isOpen else { return (0, 0) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: HandoffMessage.largestMessage, alignment: 8)
        defer { buffer.deallocate() }
        var moved = 0, lost = 0
        receiving: while true {
            switch Channel(fd: handoffReceive.raw).receive(into: buffer, blocking: false) {
            case .interrupted, .invalid: continue
            case .nothing, .empty, .failed: break receiving
            case .message(let length, let fd):
                // Their tickets are the environment's own: the multiplexers take them back as such.
                let outcome = Channel(fd: handbackSend.raw).send(fd: fd, payload: UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
                close(fd)  // sent or not, the parent keeps no client socket
                if outcome == .sent {
                    moved += 1
                } else {
                    lost += 1
                    log(PERUSER_LOG_ERR, "peruser: could not return a queued connection to the multiplexers (\(outcome)); closed")
                }
            }
        }
        return (moved, lost)
    }
}

/// Passes environment `environment`'s renewed channel ends to the multiplexer in `slot`.
func giveChannels(_ environment: Int, toMultiplexerIn slot: Int) -> Bool {
    guard let lasting, channels.indices.contains(environment), lasting.control(slot) >= 0 else { return false }
    let control = Channel(fd: lasting.control(slot))
    for (kind, end) in [(ControlKind.handoff, channels[environment].handoffSend),
                        (ControlKind.handback, channels[environment].handbackReceive)] {
        let message: [UInt32] = [UInt32(environment), kind.rawValue]
        let outcome = message.withUnsafeBytes { control.send(fd: end.raw, payload: $0) }
        guard outcome == .sent else { return false }
    }
    return true
}
