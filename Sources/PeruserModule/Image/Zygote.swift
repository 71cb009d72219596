// The image zygote (ProcessorImage isolated): one apache2 per generation, executed with a
// configuration that names no tenant (every vhost a routing stub, as for an environment that
// owns none) and the same LoadModule lines as every image. It goes through Apache's first
// configuration pass, keeps the libraries it loaded, and then forks environments' images
// instead of the root executing apache2 for each: an image born here reads its own
// configuration in Apache's second pass, as an executed one does, but inherits the libraries
// already relocated. Those pages are then one copy for all images instead of one per image:
// with 300 tenants in random order, a worker touches them on every request, and each private
// copy is another cold page (BENCHMARKS.md). The multiplexers' image is still executed on its
// own: it parses untrusted input, and keeps an address layout of its own. The price: every image
// shares the zygote's address layout, stack canary and pointer guard; ProcessorImageZygote Off
// (Images.swift) executes each image on its own instead.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// The environment variable that tells an executed apache2 it is the zygote:
/// "generation:control:rootPid".
let zygoteVariable = "PERUSER_ZYGOTE"
/// Its process name (comm), so that `ps` and the tests tell it from an image.
let zygoteName = "peruser-zygote"

struct ZygoteStart {
    let generation: UInt32
    let control: Int32
    let rootPid: pid_t

    /// Padded: an image born from the zygote writes its own PERUSER_IMAGE over it (see
    /// `showEnvironment`).
    var variable: String { "\(generation):\(control):\(rootPid):" + String(repeating: "-", count: 100) }

    static func fromEnvironment() -> ZygoteStart? {
        guard let raw = getenv(zygoteVariable) else { return nil }
        return parse(String(cString: raw))
    }

    static func parse(_ text: String) -> ZygoteStart? {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false)
        guard fields.count == 4, let generation = UInt32(fields[0]), let control = Int32(fields[1]), control > 2,
              let root = Int32(fields[2]), root > 1 else { return nil }
        return ZygoteStart(generation: generation, control: control, rootPid: root)
    }
}

/// Set in pre_config of the zygote's configuration pass.
nonisolated(unsafe) var zygoteStart: ZygoteStart?

/// What the root sends the zygote for one image: three descriptors, one message each
/// (configuration, control channel end, child table), then the image's start.
enum ZygoteRequest {
    static let descriptor: UInt8 = 0x46  // "F"
    static let start: UInt8 = 0x53       // "S" + ImageStart.variable (its descriptors renumbered by the zygote)
    static let born: UInt8 = 0x50        // "P" + Int32 pid, the answer
    static let failed: UInt8 = 0x45      // "E" + Int32 errno, the answer
    static let mostBytes = 512
}

// MARK: The zygote's side

/// The zygote's post_config: keeps every library loaded, then forks images as the root asks.
/// Returns only in an image it forked, ready for Apache's second pass with the image's own
/// configuration.
func zygoteRun(_ start: ZygoteStart) {
    initialVariable = getenv(zygoteVariable).map { $0 - (zygoteVariable.utf8.count + 1) }
    unsetenv(zygoteVariable)
    setProcessName(zygoteName)
    keepLibrariesLoaded()
    signal(SIGCHLD, SIG_DFL)
    signal(SIGHUP, SIG_IGN)  // the root ends a generation by closing the control channel
    signal(SIGUSR1, SIG_IGN)
    signal(SIGWINCH, SIG_IGN)
    signal(SIGPIPE, SIG_IGN)
    let control = Channel(fd: start.control)
    var held: [Int32] = []
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ZygoteRequest.mostBytes, alignment: 8)
    defer { buffer.deallocate() }
    while true {
        switch control.receive(into: buffer, blocking: true, descriptorOptional: true) {
        case .interrupted, .nothing, .invalid: continue
        case .empty, .failed: exit(0)  // the root closed the channel: this generation is over
        case .message(let length, let fd):
            guard length >= 1 else { if fd >= 0 { close(fd) }; continue }
            switch buffer[0] {
            case ZygoteRequest.descriptor where fd >= 0 && held.count < 3:
                held.append(fd)
            case ZygoteRequest.start:
                if fd >= 0 { close(fd) }
                let text = String(decoding: UnsafeRawBufferPointer(rebasing: buffer[1..<length]), as: UTF8.self)
                var answer = (ZygoteRequest.failed, EINVAL)
                if held.count == 3, let asked = ImageStart.parse(text), case .environment = asked.role,
                   asked.rootPid == start.rootPid {
                    switch forkImage(asked, configuration: held[0], control: held[1], table: held[2], zygote: start) {
                    case .success(let pid): answer = (ZygoteRequest.born, pid)
                    case .failure(let error): answer = (ZygoteRequest.failed, error.code)
                    case .none: return  // the image, born: on to Apache's second pass
                    }
                }
                for descriptor in held { close(descriptor) }
                held = []
                var reply = [UInt8](repeating: answer.0, count: 5)
                withUnsafeBytes(of: answer.1) { for index in 0..<4 { reply[index + 1] = $0[index] } }
                _ = reply.withUnsafeBytes { control.send(payload: $0) }
            default:
                if fd >= 0 { close(fd) }
            }
        }
    }
}

/// Forks an image that the root adopts. nil in the image itself.
private func forkImage(_ asked: ImageStart, configuration: Int32, control: Int32, table: Int32,
                       zygote: ZygoteStart) -> Result<pid_t, Errno>? {
    switch forkForTheRoot(rootPid: zygote.rootPid, closingInChild: [zygote.control]) {
    case .forked(let pid): return .success(pid)
    case .failed(let error): return .failure(error)
    case .child:
        guard becomeImage(asked, configuration: configuration, control: control, table: table) else { _exit(exitChildFatal) }
        return nil
    }
}

/// In the forked image, now the root's child: puts the image's configuration where Apache's
/// second pass reads it (the descriptor named by `-f /proc/self/fd/N`), and says what it is
/// in PERUSER_IMAGE, as the root says it to an image it executes.
private func becomeImage(_ asked: ImageStart, configuration: Int32, control: Int32, table: Int32) -> Bool {
    _ = peruser_prctl(PR_SET_PDEATHSIG, UInt(SIGTERM))
    guard let ownConfiguration = configurationDescriptor(), ownConfiguration > 2,
          control != ownConfiguration, table != ownConfiguration,
          dup2(configuration, ownConfiguration) == ownConfiguration else { return false }
    close(configuration)
    let start = ImageStart(role: asked.role, generation: asked.generation, control: control, table: table,
                           tableSize: asked.tableSize, rootPid: asked.rootPid, slots: asked.slots,
                           environments: asked.environments)
    guard unshareInheritedMemory() else { return false }
    setenv(imageVariable, start.variable, 1)
    showEnvironment(start.variable)
    setProcessName("apache2")
    var unblocked = sigset_t()
    sigemptyset(&unblocked)
    sigprocmask(SIG_SETMASK, &unblocked, nil)
    zygoteStart = nil
    return true
}

/// Marks every shared library loaded so far RTLD_NODELETE, so that Apache's unloading of the
/// modules before its second pass leaves them, relocated, in place; the second pass's dlopen
/// then finds them loaded. This module is left out: it starts afresh in each pass (its Swift
/// globals must, see ConfigurationEntry.swift).
private func keepLibrariesLoaded() {
    let own = loadedModulePath(symbol: "mpm_peruser_module").flatMap(canonicalPath)
    var seen = Set<String>()
    for mapping in ownMappings() ?? [] where mapping.path.hasPrefix("/") && mapping.path.contains(".so") {
        guard mapping.path != own, seen.insert(mapping.path).inserted else { continue }
        // RTLD_NOLOAD: only what is loaded already; the handle is kept on purpose.
        _ = dlopen(mapping.path, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE)
    }
}

/// The file LoadModule loaded `symbol` from, relative to ServerRoot as Apache resolves it.
private func loadedModulePath(symbol wanted: String) -> String? {
    var index: Int32 = 0
    var file: UnsafePointer<CChar>?, symbol: UnsafePointer<CChar>?
    while peruser_shim_loaded_module(index, &file, &symbol) == 1 {
        if let file, let symbol, String(cString: symbol) == wanted {
            let path = String(cString: file)
            return path.hasPrefix("/") ? path : (string(ap_server_root) ?? "") + "/" + path
        }
        index += 1
    }
    return nil
}

/// Gives the image its own copy of every shared anonymous mapping it inherited from the zygote,
/// at the same address and with the same bytes: what a module made in the zygote's first pass
/// and keeps across passes (mod_ssl's session-cache mutex lives in the process pool) would
/// otherwise be one page written by every environment's workers, where executed images each
/// made their own. A shared mapping of a file cannot be copied so: false (logged), and the
/// image does not start.
private func unshareInheritedMemory() -> Bool {
    guard let mappings = ownMappings() else { return false }
    for mapping in mappings where mapping.isShared {
        guard mapping.path.isEmpty || mapping.path.hasPrefix("/dev/zero") || mapping.path == "[anon_shmem]" else {
            log(PERUSER_LOG_EMERG, "peruser: an image forked from the zygote would share \(mapping.path) with the other "
                + "environments' images (a module mapped it shared in the zygote); not started. Set ProcessorImage "
                + "shared or report the module")
            return false
        }
        let length = Int(mapping.end - mapping.start)
        guard let address = UnsafeMutableRawPointer(bitPattern: mapping.start), let copy = malloc(length) else { return false }
        defer { free(copy) }
        if mapping.protection & PROT_READ == 0 { _ = mprotect(address, length, PROT_READ) }
        copy.copyMemory(from: address, byteCount: length)
        guard let fresh = mmap(address, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              fresh == address else { return false }
        fresh.copyMemory(from: copy, byteCount: length)
        if mapping.protection != PROT_READ | PROT_WRITE { _ = mprotect(fresh, length, mapping.protection) }
    }
    return true
}

/// One line of /proc/self/maps.
private struct Mapping {
    let start: UInt
    let end: UInt
    /// "r", "w", "x" and "p" (private) or "s" (shared).
    let permissions: [Character]
    /// The file, a name such as "[heap]", or "" for anonymous memory.
    let path: String

    var isShared: Bool { permissions[3] == "s" }
    var protection: Int32 {
        (permissions[0] == "r" ? PROT_READ : 0) | (permissions[1] == "w" ? PROT_WRITE : 0)
            | (permissions[2] == "x" ? PROT_EXEC : 0)
    }
}

/// This process's mappings (nil if /proc/self/maps cannot be read); lines it cannot parse are
/// left out.
private func ownMappings() -> [Mapping]? {
    guard let maps = fopen("/proc/self/maps", "r") else { return nil }
    defer { fclose(maps) }
    var mappings: [Mapping] = []
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), maps) != nil {
        let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 5, fields[1].count == 4 else { continue }
        let range = fields[0].split(separator: "-")
        guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16) else { continue }
        let path = fields.count > 5 ? fields[5...].joined(separator: " ") : ""
        mappings.append(Mapping(start: start, end: end, permissions: Array(fields[1]),
                                path: path.hasSuffix("\n") ? String(path.dropLast()) : path))
    }
    return mappings
}

/// PERUSER_ZYGOTE as the zygote's initial environment block holds it (unsetenv leaves the bytes).
nonisolated(unsafe) private var initialVariable: UnsafeMutablePointer<CChar>?

/// Writes PERUSER_IMAGE over PERUSER_ZYGOTE in the initial environment block, which
/// /proc/PID/environ (and `ps e`) shows: an image born here then reads there as an executed
/// one does, and the tests tell images apart by it. (Pointing the kernel at a block of its own
/// would take CAP_SYS_RESOURCE, which containers often drop.) The zygote's value is padded so
/// that the image's fits; what is left of it becomes empty entries.
private func showEnvironment(_ variable: String) {
    guard let target = initialVariable else { return }
    let old = strlen(target)
    let entry = Array("\(imageVariable)=\(variable)".utf8)
    guard entry.count <= old else { return }
    let bytes = UnsafeMutableRawPointer(target).bindMemory(to: UInt8.self, capacity: old)
    for index in 0..<old { bytes[index] = index < entry.count ? entry[index] : 0 }
}

private func setProcessName(_ name: String) {
    name.withCString { _ = peruser_prctl(PR_SET_NAME, UInt(bitPattern: Int(bitPattern: $0))) }
}

private func canonicalPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

// MARK: The root's side

struct ZygoteHandle {
    var pid: pid_t
    var control: FileDescriptor
    /// When it last forked an image (ms): a zygote whose images all left exits after a while.
    var used: Int64
}

nonisolated(unsafe) var zygote: ZygoteHandle?
/// This generation's zygote failed (logged): images are executed one by one until the next
/// restart.
nonisolated(unsafe) var zygoteFailed = false

/// Forks `start`'s image from the zygote, starting the zygote first if it does not run. nil if
/// it cannot (logged): the caller executes the image itself.
func imageFromZygote(_ start: ImageStart, configuration: Int32, control: Int32, table: Int32,
                     label: String) -> pid_t? {
    guard !zygoteFailed else { return nil }
    if zygote == nil { startZygote(generation: start.generation) }
    guard let running = zygote else { return giveUpZygote("it cannot start") }
    let channel = Channel(fd: running.control.raw)
    for descriptor in [configuration, control, table] {
        let sent = [ZygoteRequest.descriptor].withUnsafeBytes { channel.send(fd: descriptor, payload: $0) }
        guard sent == .sent else { return giveUpZygote("cannot pass it a descriptor (\(sent))") }
    }
    let request = [ZygoteRequest.start] + Array(start.variable.utf8)
    let sent = request.withUnsafeBytes { channel.send(payload: $0) }
    guard sent == .sent else { return giveUpZygote("cannot ask it for an image (\(sent))") }
    // A zygote just started answers once through Apache's first pass (tens of ms); then a fork.
    let deadline = monotonicMilliseconds() + 10_000
    var answer = [UInt8](repeating: 0, count: 8)
    while true {
        let left = deadline - monotonicMilliseconds()
        guard left > 0 else { return giveUpZygote("it did not answer within 10 s") }
        var entry = pollfd(fd: running.control.raw, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, Int32(left)) <= 0 { continue }
        let length = answer.withUnsafeMutableBytes { recv(running.control.raw, $0.baseAddress, $0.count, 0) }
        if length == 0 || (length < 0 && errno != EAGAIN && errno != EINTR) {
            return giveUpZygote("it exited (\(length == 0 ? "channel closed" : Errno.current.description))")
        }
        guard length == 5 else { continue }
        let value = answer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 1, as: Int32.self) }
        if answer[0] == ZygoteRequest.born, value > 1 {
            zygote?.used = monotonicMilliseconds()
            return value
        }
        log(PERUSER_LOG_ERR, "peruser: the image zygote (pid \(running.pid)) could not fork \(label): \(Errno(value))")
        return nil
    }
}

private func giveUpZygote(_ why: String) -> pid_t? {
    log(PERUSER_LOG_ERR, "peruser: the image zygote\(zygote.map { " (pid \($0.pid))" } ?? ""): \(why); until the "
        + "next restart, each environment's image is an apache2 executed on its own (as before the zygote: "
        + "the same isolation, more memory and CPU per image)")
    zygoteFailed = true
    if let running = zygote { signalProcess(running.pid, SIGKILL) }  // it may hang; reaped as an unknown child
    endZygote()
    return nil
}

/// Executes this generation's zygote, with the configuration of an image that owns no vhost.
private func startZygote(generation: UInt32) {
    var rootEnd = FileDescriptor.none, zygoteEnd = FileDescriptor.none
    defer { zygoteEnd.close() }
    do throws(Errno) {
        (rootEnd, zygoteEnd) = try Channel.pair()
    } catch {
        log(PERUSER_LOG_ERR, "peruser: cannot start the image zygote: control channel: \(error)")
        return
    }
    _ = fcntl(zygoteEnd.raw, F_SETFD, 0)
    let start = ZygoteStart(generation: generation, control: zygoteEnd.raw, rootPid: getpid())
    let text = imageConfiguration(for: .environment(configuration.environments.count))
    guard let pid = executeApache(configuration: text, variable: (zygoteVariable, start.variable), label: "the image zygote")
    else { rootEnd.close(); return }
    rootEnd.setNonBlocking()
    zygote = ZygoteHandle(pid: pid, control: rootEnd, used: monotonicMilliseconds())
    log(PERUSER_LOG_DEBUG, "peruser: started the image zygote (pid \(pid))")
}

/// Closes the zygote's control channel: it exits.
func endZygote() {
    guard var running = zygote else { return }
    running.control.close()
    zygote = nil
}

/// A reaped pid that was the zygote. True if it was.
func zygoteExited(_ pid: pid_t, status: ExitStatus, quietly: Bool) -> Bool {
    guard let running = zygote, running.pid == pid else { return false }
    endZygote()
    if !quietly {
        log(PERUSER_LOG_ERR, "peruser: the image zygote (pid \(pid)) exited "
            + "(\(status.killedBySignal.map { "signal \($0)" } ?? "status \(status.exitCode)")); "
            + "it is started again when an image is needed")
    }
    return true
}
