/**
 * Type tests of the server's side of the contract (never run: the root `tsc --noEmit` checks
 * them). The zod schemas accept exactly the protocol's payload types (server/src/protocol-schemas.ts
 * has the compile-time drift checks); these pin what the handlers get after validation.
 */
import { expectTypeOf } from "vitest";
import type { CommandInputs, CommandName } from "../../protocol/index.js";
import {
  type CommandPayload,
  type commandSchemas,
  namesComplete,
  schemaDrift,
} from "../../server/src/protocol-schemas.js";
import type { SocketData } from "../../server/src/socket/types.js";

expectTypeOf(schemaDrift).toEqualTypeOf<true>();
expectTypeOf(namesComplete).toEqualTypeOf<true>();
expectTypeOf<keyof typeof commandSchemas>().toEqualTypeOf<CommandName>();
expectTypeOf<CommandPayload<"chat:open">>().toEqualTypeOf<{
  chatId: string;
  limit?: number | undefined;
}>();
expectTypeOf<CommandPayload<"message:send">>().toEqualTypeOf<CommandInputs["message:send"]>();
// Server-only state stays out of the protocol package.
expectTypeOf<SocketData["dbUserId"]>().toEqualTypeOf<string>();

// @ts-expect-error the protocol has no SocketData
export type NotInProtocol = import("../../protocol/index.js").SocketData;
